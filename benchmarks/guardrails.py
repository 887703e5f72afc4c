"""What the guardrails cost: rails over a model's answer, against the time a 135M model on 2 CPU cores
takes to write it (~30 tokens/s with transformers, ~160 with llama.cpp Q8_0; README "Serving").

    python benchmarks/guardrails.py [--chars 2000] [--repeat 20]

Prints microseconds per answer for each rail (and all of them, whole and streamed token by token) and
the ratio to the answer's decode time at 160 tokens/s: a rail is cheap when that ratio is far below 1.
"""

from __future__ import annotations

import argparse
import time

TEXT = ("The answer is 42, as the table shows. Mail jane.doe@example.org for the sheet, or call +44 20 7946 "
        "0958. Each row sums the two before it; the last is the total. ")


def _time(fn, repeat: int) -> float:
    fn()  # warm: models load, regexes compile
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    from shipyard.apps.guardrails import OutputRails, Rails, RailsConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    text = (TEXT * (args.chars // len(TEXT) + 1))[:args.chars]
    tokens = max(1, len(text) // 4)  # ~4 characters a token
    decode_s = tokens / 160
    pieces = [text[i:i + 4] for i in range(0, len(text), 4)]
    setups = {d: [{"detector": d, "at": ["output"], "action": "redact"}] for d in ("pii", "toxicity", "injection")}
    setups["all three"] = [r for rs in setups.values() for r in rs]
    print(f"answer: {len(text)} characters (~{tokens} tokens, {decode_s * 1000:.0f} ms to decode at 160 tokens/s)")
    print(f"{'rails':<12}{'whole, ms':>12}{'streamed, ms':>14}{'x decode':>10}")
    for name, specs in setups.items():
        rails = Rails(RailsConfig.model_validate({"rails": specs}))
        whole = _time(lambda rails=rails: rails.check(text, "output"), args.repeat)

        def streamed(rails=rails):
            out = OutputRails(rails)
            for p in pieces:
                out.feed(p)
            out.finish()

        stream = _time(streamed, args.repeat)
        print(f"{name:<12}{whole * 1000:>12.2f}{stream * 1000:>14.2f}{max(whole, stream) / decode_s:>10.3f}")


if __name__ == "__main__":
    main()
