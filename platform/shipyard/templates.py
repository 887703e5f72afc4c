"""The one prompt format shared by fine-tuning, evaluation, DPO and the chat endpoint.

Training and serving must agree on it, so it lives in one place: the tokenizer carries it as its
chat template, and ``format_prompt`` renders the same text for (instruction, input) rows.
"""

from __future__ import annotations

PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
# Jinja2 chat template (transformers' apply_chat_template): system + user turns become the
# instruction, earlier assistant turns are replayed, and the generation prompt opens a response.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}\n"
    "{% else %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% if loop.last or messages[loop.index0 + 1]['role'] == 'assistant' %}### Response:\n{% endif %}"
    "{% endif %}"
    "{% endfor %}"
)


def format_prompt(instruction: str, input: str = "") -> str:
    """The model-facing prompt for one instruction (and optional input text)."""
    body = f"{instruction}\n\n{input}" if input else instruction
    return PROMPT.format(instruction=body)
