"""The llama.cpp engine: a GGUF decoded by libllama (``models.llamacpp``), scheduled by Shipyard's own engine.

    Engine(None, tokenizer, "cpu", new_batch=lambda: LlamaBatch(runtime), eos_ids=...)

``serving.engine`` drives this exactly as it drives a transformers model (``kv.CausalBatch``): the
same admission, per-row sampling, seeds, stop strings, log-probs, cancel and deadlines, so every
application feature behaves the same whichever engine decodes. Only the forward pass is llama.cpp's:
each row is a llama.cpp *sequence* in one context (``n_seq`` of them, ``n_ctx_seq`` positions each,
allocated at load), a step decodes every running row's last token in one ``llama_decode``, and a row
that leaves frees its sequence's cells. Logits come back as float32 rows (the engine samples them).
"""

from __future__ import annotations

from shipyard.models.gguf_model import context_of
from shipyard.models.llamacpp import PREFILL_BATCH, LlamaRuntime


class LlamaBatch:
    """The engine's batch protocol (``kv.CausalBatch``'s) over llama.cpp sequences: always joinable."""

    joinable = True

    def __init__(self, runtime: LlamaRuntime):
        self.rt = runtime
        self.seqs: list[int] = []
        self.pos: list[int] = []

    def prefill(self, prompts: list[list[int]]):
        """Start ``prompts``: the logits of each one's next token, [rows, vocab]."""
        entries = []
        for prompt in prompts:
            seq = self.rt.take_seq()
            self.seqs.append(seq)
            self.pos.append(len(prompt))
            entries += [(tok, i, seq, i == len(prompt) - 1) for i, tok in enumerate(prompt)]
        return self.rt.decode(entries)

    def prefill_scored(self, prompt: list[int], on_logits):
        """Start one row, handing each chunk's logits [n, vocab] to ``on_logits(start, logits)``."""
        seq = self.rt.take_seq()
        self.seqs.append(seq)
        self.pos.append(len(prompt))
        last = None
        for start in range(0, len(prompt), PREFILL_BATCH):
            part = prompt[start:start + PREFILL_BATCH]
            logits = self.rt.decode([(tok, start + i, seq, True) for i, tok in enumerate(part)])
            on_logits(start, logits)
            last = logits[-1:]
        return last

    def join(self, other: LlamaBatch) -> None:
        self.seqs += other.seqs
        self.pos += other.pos
        other.seqs, other.pos = [], []

    def step(self, tokens: list[int]):
        """Feed each row its last token: the logits of the next, [rows, vocab]."""
        logits = self.rt.decode([(tok, pos, seq, True) for tok, pos, seq in zip(tokens, self.pos, self.seqs,
                                                                                  strict=True)])
        self.pos = [p + 1 for p in self.pos]
        return logits

    def keep(self, rows: list[int]) -> None:
        kept = set(rows)
        for i, seq in enumerate(self.seqs):
            if i not in kept:
                self.rt.give_back(seq)
        self.seqs = [self.seqs[i] for i in rows]
        self.pos = [self.pos[i] for i in rows]

    def close(self) -> None:
        """The batch is dropped: its sequences are free again."""
        self.keep([])


def load_llamacpp(llm, gguf) -> None:
    """Set up a ShipyardLLM for the llama.cpp engine: its tokenizer, limits and EOS ids from the directory
    (Shipyard tokenizes; llama.cpp only decodes ids), the GGUF loaded with ``max_batch_size`` sequences."""
    from shipyard.models.causal_lm import load_tokenizer

    if llm.requested_dtype not in ("auto", "float32"):
        raise ValueError(f"--engine llamacpp serves the GGUF's own types ({gguf.name}); --dtype must stay auto")
    llm.device, llm.dtype_name, llm.seq2seq = "cpu", "gguf-" + gguf.stem.removeprefix("model-"), False
    llm.tokenizer = load_tokenizer(llm.model_dir)
    llm.gguf = gguf
    llm.eos_ids = _eos_ids(llm.model_dir, llm.tokenizer)
    fit_runtime(llm, llm.max_batch_size)


def cores_to_ggml() -> None:
    """For a process that serves with llama.cpp (``build_server`` calls it): torch only samples there (one vocab
    row per sequence), so it gets one thread and its idle OpenMP workers do not spin on the cores ggml decodes on
    (measured on 2 cores, q8_0: 88 -> 102 tokens/s). Process-wide, so not done by ``load``: a process that also
    trains or evaluates with torch keeps its threads."""
    import torch

    torch.set_num_threads(1)


def fit_runtime(llm, n_seq: int) -> None:
    """A runtime with ``n_seq`` sequences (a new one when the batch size changes)."""
    if llm.runtime is not None and len(llm.runtime.free) == llm.runtime.n_seq == n_seq:
        return
    if llm.runtime is not None:
        llm.runtime.close()
    llm.runtime = LlamaRuntime(llm.gguf, n_seq=n_seq, n_ctx_seq=context_of(llm.model_dir))
    llm.context_length, llm.vocab_size = llm.runtime.n_ctx_seq, llm.runtime.vocab_size


def _eos_ids(model_dir, tokenizer) -> set[int]:
    from transformers import GenerationConfig

    from shipyard.serving.engine import eos_ids_of

    try:
        config = GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        config = None
    return eos_ids_of(tokenizer, config)
