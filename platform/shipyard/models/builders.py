"""Randomly initialised transformers models for pretraining, sized by a PretrainConfig.

One builder per family: decoder-only (Llama, GPT-2) for causal LM, encoder-only (BERT, RoBERTa)
for masked LM, encoder-decoder (T5) for span corruption.
"""

from __future__ import annotations


def prepare_tokenizer(tokenizer, objective: str, sentinels: int = 0) -> list[str]:
    """Add the special tokens an objective needs and the tokenizer lacks; returns what was added.

    MLM needs a mask token and span corruption needs ``sentinels`` ``<extra_id_N>`` tokens; a BPE
    tokenizer trained for a causal LM has neither. Adding them before the model is built keeps the
    embedding matrix the right size from the start.
    """
    added: list[str] = []
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        added.append("<pad>")
    if objective == "mlm" and tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": "<mask>"})
        added.append("<mask>")
    if objective == "span":
        have = set(tokenizer.get_vocab())
        missing = [f"<extra_id_{i}>" for i in range(sentinels) if f"<extra_id_{i}>" not in have]
        if missing:
            tokenizer.add_special_tokens({"extra_special_tokens": missing},
                                         replace_extra_special_tokens=False)
            added.extend(missing)
    return added


def build_model(cfg, tokenizer):
    """A fresh model of ``cfg.architecture`` for ``cfg.objective`` with the tokenizer's vocabulary."""
    import transformers as tf

    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id)
    p = cfg.dropout
    if cfg.architecture == "llama":
        config = tf.LlamaConfig(
            hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.context_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True, attention_dropout=p, **common)
        return tf.LlamaForCausalLM(config)
    if cfg.architecture == "gpt2":
        config = tf.GPT2Config(
            n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
            n_positions=cfg.context_length, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, **common)
        return tf.GPT2LMHeadModel(config)
    if cfg.architecture in ("bert", "roberta"):
        cls = tf.BertConfig if cfg.architecture == "bert" else tf.RobertaConfig
        # RoBERTa numbers positions from padding_idx + 1 (pad is 1 in its own vocabulary, any id in ours).
        extra = tokenizer.pad_token_id + 1 if cfg.architecture == "roberta" else 0
        config = cls(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                     num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                     max_position_embeddings=cfg.context_length + extra, type_vocab_size=1,
                     hidden_dropout_prob=p, attention_probs_dropout_prob=p, **common)
        model_cls = tf.BertForMaskedLM if cfg.architecture == "bert" else tf.RobertaForMaskedLM
        return model_cls(config)
    if cfg.architecture == "t5":
        config = tf.T5Config(
            d_model=cfg.hidden_size, d_kv=cfg.hidden_size // cfg.num_heads, d_ff=cfg.intermediate_size,
            num_layers=cfg.num_layers, num_decoder_layers=cfg.num_layers, num_heads=cfg.num_heads,
            dropout_rate=p, feed_forward_proj="gated-gelu", eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **common)
        return tf.T5ForConditionalGeneration(config)
    raise ValueError(f"unknown architecture {cfg.architecture!r}")


def flop_params(model) -> int:
    """The N of 6·N FLOPs per token: unique parameters less the position tables (nanoGPT's count).

    A tied input embedding is counted once because it is also the output projection, which is a
    real matmul; a position table is a lookup.
    """
    skip = {id(p) for n, p in model.named_parameters() if "position" in n or ".wpe." in n}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


PACKED_CAUSAL = "shipyard_packed_causal"


def _no_mask_without_padding(*args, attention_mask=None, **kwargs):
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:  # packed rows: SDPA's is_causal flag stands for the mask
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def packed_causal_attention(model) -> str | None:
    """Train a decoder-only SDPA model on packed rows with SDPA's ``is_causal`` flag; return the old implementation.

    Under torch.compile, transformers always builds an explicit causal mask: with torch < 2.14 it
    cannot tell that the mask may be skipped. SDPA's flash kernel takes no mask, so every compiled
    step ran a slower attention kernel. Pretraining rows are packed and carry no padding, so this
    registers transformers' own SDPA attention under a mask function that returns no mask when no
    padding mask is given. A padding mask is still applied. ``model.set_attn_implementation`` with the
    returned name undoes it; None means nothing was changed. On an H100 this took GPT-2 124M
    (batch 64, compiled) from 34.4% to 39.4% MFU (benchmarks/train_overhead.py).
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    previous = getattr(model.config, "_attn_implementation", None)
    if previous != "sdpa" or model.config.is_encoder_decoder:
        return None
    AttentionInterface.register(PACKED_CAUSAL, sdpa_attention_forward)
    AttentionMaskInterface.register(PACKED_CAUSAL, _no_mask_without_padding)
    model.set_attn_implementation(PACKED_CAUSAL)
    return previous
