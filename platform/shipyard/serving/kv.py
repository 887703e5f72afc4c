"""The running batch of the transformers engine: one KV cache, attention mask and position per row.

A causal LM's batch is *joinable*: rows prefilled later are left-padded to the batch's length and
concatenated into its cache, so a request arriving mid-generation starts at the next step instead
of waiting for the batch to finish (iteration-level scheduling, as Orca and vLLM do). Finished
rows leave the cache at once, and columns that only pad are cut. Positions are kept per row, so a
row's logits do not depend on its neighbours' lengths. Only plain dynamic caches are merged (a
sliding-window or hybrid cache is not); a seq2seq batch is static: its rows start together.
"""

from __future__ import annotations

PREFILL_CHUNK = 512  # prompt positions per forward when a row's prompt is scored (echo): bounds the logits


class CausalBatch:
    """Rows of a decoder-only model. ``prefill`` starts rows; ``join`` merges two batches; ``step`` decodes one."""

    def __init__(self, model, device, keep_logits: bool):
        self.model, self.device, self.keep_logits = model, device, keep_logits
        self.cache = self.mask = self.pos = None

    @property
    def joinable(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        layers = getattr(self.cache, "layers", None)
        return layers is not None and all(type(layer) is DynamicLayer for layer in layers)

    def _forward(self, ids, mask, pos, keep: int):
        extra = {"logits_to_keep": keep} if self.keep_logits else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache,
                         use_cache=True, **extra)
        self.cache = out.past_key_values
        return out.logits

    def prefill(self, prompts: list[list[int]]):
        """Start ``prompts`` (left-padded together): the logits of each one's next token, [rows, vocab]."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        self.mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            self.mask[i, width - len(p):] = 1
        ids, self.mask = ids.to(self.device), self.mask.to(self.device)
        pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.pos = self.mask.sum(-1)
        return self._forward(ids, self.mask, pos, 1)[:, -1].float()

    def prefill_scored(self, prompt: list[int], on_logits) -> object:
        """Start one row in chunks, handing each chunk's logits [n, vocab] to ``on_logits(start, logits)``
        (the prompt's own log-probs); returns the next token's logits [1, vocab]."""
        import torch

        last = None
        for start in range(0, len(prompt), PREFILL_CHUNK):
            chunk = torch.tensor([prompt[start:start + PREFILL_CHUNK]], device=self.device)
            n = chunk.shape[1]
            self.mask = torch.ones((1, start + n), dtype=torch.long, device=self.device)
            pos = torch.arange(start, start + n, device=self.device)[None]
            logits = self._forward(chunk, self.mask, pos, 0)[0]
            on_logits(start, logits)
            last = logits[-1:].float()
        self.pos = torch.tensor([len(prompt)], device=self.device)
        return last

    def join(self, other: CausalBatch) -> None:
        """Append ``other``'s rows after this batch's, left-padding the shorter side's cache and mask."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        self.mask = torch.cat([F.pad(self.mask, (width - self.mask.shape[1], 0)),
                               F.pad(other.mask, (width - other.mask.shape[1], 0))])
        self.pos = torch.cat([self.pos, other.pos])

    def step(self, tokens: list[int]):
        """Feed each row its last token: the logits of the next, [rows, vocab]."""
        import torch

        ids = torch.tensor(tokens, device=self.device)[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], dim=1)
        logits = self._forward(ids, self.mask, self.pos[:, None], 1)[:, -1].float()
        self.pos = self.pos + 1
        return logits

    def keep(self, rows: list[int]) -> None:
        """Only ``rows`` stay; columns no remaining row attends to are cut."""
        import torch

        idx = torch.tensor(rows, device=self.device)
        self.mask, self.pos = self.mask[idx], self.pos[idx]
        first = int((self.mask.sum(0) > 0).nonzero()[0]) if self.mask.numel() else 0
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[idx, :, first:], layer.values[idx, :, first:]


def _left_pad(t, width: int):
    import torch.nn.functional as F  # noqa: N812

    return F.pad(t, (0, 0, width - t.shape[-2], 0))


class Seq2SeqBatch:
    """Rows of an encoder-decoder model (T5): the prompt goes to the encoder once; rows start together."""

    joinable = False

    def __init__(self, model, device, keep_logits: bool = False):
        self.model, self.device = model, device
        self.cache = self.enc = self.enc_mask = None

    def prefill(self, prompts: list[list[int]]):
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, :len(p)], mask[i, :len(p)] = torch.tensor(p), 1
        self.enc_mask = mask.to(self.device)
        self.enc = self.model.get_encoder()(input_ids=ids.to(self.device), attention_mask=self.enc_mask)
        start = self.model.config.decoder_start_token_id
        return self.step([start] * len(prompts))

    def step(self, tokens: list[int]):
        import torch

        out = self.model(encoder_outputs=self.enc, attention_mask=self.enc_mask, past_key_values=self.cache,
                         decoder_input_ids=torch.tensor(tokens, device=self.device)[:, None], use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def keep(self, rows: list[int]) -> None:
        import torch

        idx = torch.tensor(rows, device=self.device)
        self.enc_mask = self.enc_mask[idx]
        self.enc.last_hidden_state = self.enc.last_hidden_state[idx]
        self.cache.batch_select_indices(idx)
