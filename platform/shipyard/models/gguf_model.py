"""A GGUF as the llama.cpp engine serves it, for the stages that measure models (evaluate, and through it the gate).

    model = GGUFModel(served_gguf(model_dir), model_dir)
    inference.generate(model, tokenizer, prompts, 24)       # the helpers of models.inference take it

``models.inference``'s helpers (generate, text_nll, score_continuations, decode_latency) hand a GGUFModel to
the functions here, which compute the same quantities with the same tokenization, truncation and greedy
rule as for a transformers model, but every forward pass is libllama's on the served file. So the eval
table's row for an optimized model with a GGUF export describes the bytes ``shipyard serve`` decodes.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.models.llamacpp import LlamaRuntime, gguf_decode_latency, gguf_text_nll

MAX_CTX_SEQ = 4096  # positions per sequence: llama.cpp allocates n_seq of them at load


def context_of(model_dir) -> int:
    """Positions per llama.cpp sequence for a model directory: its context, at most MAX_CTX_SEQ."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
    return min(int(getattr(config, "max_position_embeddings", None) or MAX_CTX_SEQ), MAX_CTX_SEQ)


class _Config:
    def __init__(self, n_ctx: int):
        self.max_position_embeddings = n_ctx


class GGUFModel:
    """One GGUF loaded in libllama with ``n_seq`` sequences; ``models.inference`` dispatches on ``is_gguf``."""

    is_gguf = True

    def __init__(self, gguf_path: str | Path, model_dir: str | Path, n_seq: int = 4):
        self.path = Path(gguf_path)
        self.kind = self.path.stem.removeprefix("model-")
        self.runtime = LlamaRuntime(self.path, n_seq=n_seq, n_ctx_seq=context_of(model_dir))
        self.config = _Config(self.runtime.n_ctx_seq)

    def close(self) -> None:
        self.runtime.close()


def text_nll(model: GGUFModel, tokenizer, texts: list[str], context_length: int) -> list[tuple[float, int]]:
    return gguf_text_nll(model.runtime, tokenizer, texts, context_length)


def decode_latency(model: GGUFModel, tokenizer, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
    got = gguf_decode_latency(model.runtime, tokenizer, prompts, max_new_tokens)
    return {"ms_per_token": got["ms_per_token"], "first_token_ms": got["ttft_ms"], "tokens_per_s": got["tokens_per_s"]}


def generate(model: GGUFModel, tokenizer, prompts: list[str], max_new_tokens: int,
             stop: list[str] | None = None) -> list[str]:
    """Greedy continuations, as ``inference.generate``: prompts keep their last ``context - max_new_tokens``
    tokens, a row stops at the tokenizer's EOS token (or once its text holds one of ``stop``, which the caller
    cuts off), answers are decoded without special tokens and stripped."""
    rt = model.runtime
    room = rt.n_ctx_seq - max_new_tokens
    if room < 8:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room in a {rt.n_ctx_seq}-token context")
    outputs: list[str] = []
    for i in range(0, len(prompts), rt.n_seq):
        group = [tokenizer(p, add_special_tokens=False, verbose=False)["input_ids"][-room:]
                 for p in prompts[i:i + rt.n_seq]]
        stopped = (lambda ids: any(x in tokenizer.decode(ids[-16:], skip_special_tokens=True) for x in stop)
                   ) if stop else None
        new = _greedy(rt, group, max_new_tokens, tokenizer.eos_token_id, stopped)
        outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return outputs


def _greedy(rt: LlamaRuntime, prompts: list[list[int]], max_new_tokens: int, eos: int | None,
            stopped=None) -> list[list[int]]:
    """Up to ``max_new_tokens`` argmax tokens after each prompt, one llama_decode per step for every live row."""
    seqs = [rt.take_seq() for _ in prompts]
    try:
        entries = [(t, j, s, j == len(p) - 1) for p, s in zip(prompts, seqs, strict=True) for j, t in enumerate(p)]
        nxt = rt.decode(entries).argmax(-1).tolist()
        new: list[list[int]] = [[] for _ in prompts]
        live = list(range(len(prompts)))
        for step in range(max_new_tokens):
            for row, tok in zip(live, nxt, strict=True):
                new[row].append(tok)
            live = [r for r, tok in zip(live, nxt, strict=True) if tok != eos and not (stopped and stopped(new[r]))]
            if not live or step == max_new_tokens - 1:
                break
            nxt = rt.decode([(new[r][-1], len(prompts[r]) + step, seqs[r], True) for r in live]).argmax(-1).tolist()
    finally:
        for s in seqs:
            rt.give_back(s)
    return new


def score_tokenized(model: GGUFModel, tokenized: list[tuple[list[int], int]]) -> list[tuple[float, int]]:
    """``inference.score_continuations`` by llama.cpp, given its tokenization of each (query, continuation)
    pair as (ids, where the continuation starts): the summed log-probability of the continuation's tokens and
    their count; ``n_seq`` pairs a decode."""
    import torch

    rt = model.runtime
    out: list[tuple[float, int]] = []
    for i in range(0, len(tokenized), rt.n_seq):
        group = tokenized[i:i + rt.n_seq]
        seqs = [rt.take_seq() for _ in group]
        try:
            entries = [(t, j, s, start - 1 <= j < len(ids) - 1) for (ids, start), s in zip(group, seqs, strict=True)
                       for j, t in enumerate(ids)]
            logp = torch.log_softmax(rt.decode(entries).double(), dim=-1)
        finally:
            for s in seqs:
                rt.give_back(s)
        row = 0
        for ids, start in group:
            target = torch.tensor(ids[start:])
            out.append((float(logp[row + torch.arange(len(target)), target].sum()), len(target)))
            row += len(target)
    return out
