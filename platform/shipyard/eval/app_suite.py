"""The ``app`` eval suite: each prompt app of ``shipyard.apps.reasoning`` answers every question.

The apps call the evaluated model through ``chat`` below: its chat template (the serving runtime's
fallback without one), greedy decoding through ``inference.generate`` (transformers or llama.cpp, as the
rest of the eval), stop strings cut off, the prompt fitted to the suite's context by keeping its end.
ReAct's ``search`` reads the run's RAG index the way the ``rag`` suite does (searched in the suite's
tenant); ``calculate`` and PAL's programs run in ``shipyard.apps.sandbox``.

An answer is right when it equals the reference or one of its aliases: numbers by value (``42.0`` is
``42``, and so is "It is 42" within ``SLACK`` words), text by its normalized words (case, punctuation
and articles ignored), or when the answer holds the reference's words in order and at most ``SLACK``
words more ("It is smtplib." is right; an answer that
lists every module of the library is not).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

SLACK = 4
SAMPLES_PER_APP = 2


class AppRows(list):
    """A suite's rows, the search ReAct uses over the run's RAG index (None without one), and the fewshot
    app's ``PromptSpec`` with where it came from (a file, or ``prompts:/NAME/VERSION``)."""

    search = None
    prompt = None
    prompt_source = ""
    pool = None  # fewshot's ExamplePool: the prompt's examples or the suite's examples file


def _app_row(obj: dict):
    question, answer = obj.get("question"), obj.get("answer")
    if not (isinstance(question, str) and question.strip()):
        return "missing field 'question' (a non-empty string)"
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not (isinstance(answer, str) and answer.strip()):
        return "missing field 'answer' (a non-empty string or a number)"
    aliases = obj.get("aliases", [])
    if not (isinstance(aliases, list) and all(isinstance(a, str) and a.strip() for a in aliases)):
        return "field 'aliases' must be a list of non-empty strings"
    return {"question": question, "answer": answer, "aliases": aliases}


def load_app_rows(path: str) -> tuple[list, list]:
    """([(row, file:line), ...], quarantined) of ``{question, answer, aliases?}`` rows."""
    from shipyard.data.shards import parse_records

    return parse_records(path, _app_row, "app questions", "bad_app_row")


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _number(text: str) -> float | None:
    """The value of a text that is one decimal number (commas and a $ allowed; not nan, inf or 1e5)."""
    text = text.replace("$", "").strip().rstrip(".")
    return float(text.replace(",", "")) if _NUMBER.fullmatch(text) else None


def _numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in _NUMBER.findall(text)]


def correct(answer: str, reference: str, aliases: list[str] = ()) -> bool:
    """Whether ``answer`` matches ``reference`` or an alias (module docstring)."""
    from shipyard.eval.metrics import normalize_answer

    got = normalize_answer(answer).split()
    for ref in (reference, *aliases):
        number = _number(ref)
        if number is not None:
            if _number(answer) == number or (len(answer.split()) <= 1 + SLACK and _numbers(answer) == [number]):
                return True
            continue
        want = normalize_answer(ref).split()
        if want and len(got) <= len(want) + SLACK and any(got[i:i + len(want)] == want for i in range(len(got))):
            return True
    return False


def chat_fn(model, tokenizer, context_length: int):
    """``chat(messages, max_tokens, stop) -> Reply`` over the evaluated model, greedy."""
    from shipyard.apps.reasoning import Reply
    from shipyard.models import inference

    context = min(context_length, model.config.max_position_embeddings)

    def chat(messages: list[dict], max_tokens: int, stop: list[str]) -> Reply:
        max_tokens = min(max_tokens, context // 2)
        prompt = render(messages, tokenizer)
        ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > context - max_tokens:  # keep the end, where the question and the answer's header are
            ids = ids[-(context - max_tokens):]
            prompt = tokenizer.decode(ids)
        text = inference.generate(model, tokenizer, [prompt], max_tokens, batch_size=1, stop=stop)[0]
        used = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        return Reply(text, len(ids), used)

    return chat


def render(messages: list[dict], tokenizer) -> str:
    """The chat template's prompt, or the serving runtime's ``role: content`` lines without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"


def searcher(suite, index_ref: str, feast_repo: str | Path | None):
    """search(query) -> [(doc id, text)] over the run's RAG index, in the suite's tenant."""
    from shipyard.features.retrieve import load_index

    retriever, embedder, info = load_index(index_ref, feast_repo)
    if suite.tenant not in info["tenants"]:
        raise ValueError(f"suite {suite.name!r}: tenant {suite.tenant!r} has no documents in index {info['ref']}")

    def search(query: str) -> list[tuple[str, str]]:
        hits = retriever.search(embedder.embed([query])[0], suite.tenant, suite.top_k)
        return [(h.doc_id, h.text) for h in hits]

    return search


def _app(suite, name: str, chat, question: str, rows):
    from shipyard.apps import reasoning

    if name == "direct":
        return reasoning.direct(chat, question, max_tokens=suite.max_new_tokens)
    if name == "fewshot":
        return reasoning.fewshot(chat, question, rows.prompt, suite.k, max_tokens=suite.max_new_tokens,
                                 pool=rows.pool, select=suite.select)
    if name == "cot":
        return reasoning.cot(chat, question, max_tokens=suite.max_new_tokens)
    if name == "pal":
        return reasoning.pal(chat, question, max_tokens=suite.max_new_tokens)
    tools = reasoning.Tools(rows.search if suite.searches else None).as_dict()
    tools = {t: f for t, f in tools.items() if t in suite.tools}
    return reasoning.react(chat, question, tools, suite.max_steps, max_tokens=min(suite.max_new_tokens, 128))


def run_app_suite(suite, rows: list[dict], model, tokenizer):
    """Every app of ``suite`` on every row: the metrics of ``AppSuite``, per row, and samples with traces."""
    return score_apps(suite, rows, chat_fn(model, tokenizer, suite.context_length))


def score_apps(suite, rows: list[dict], chat):
    """``run_app_suite`` over any ``chat(messages, max_tokens, stop) -> Reply`` (an OpenAI client's, say)."""
    from shipyard.eval.result import SuiteResult

    rows = rows if isinstance(rows, AppRows) else AppRows(rows)
    per_row: dict[str, list] = {}
    samples = []
    for name in suite.apps:
        hits, tokens, ms, errors = [], [], [], []
        for row in rows:
            t0 = time.perf_counter()
            out = _app(suite, name, chat, row["question"], rows)
            ms.append((time.perf_counter() - t0) * 1000)
            hits.append(float(bool(out.answer) and correct(out.answer, row["answer"], row["aliases"])))
            tokens.append(float(out.prompt_tokens + out.completion_tokens))
            errors.append(float(out.error is not None))
            if sum(s["app"] == name for s in samples) < SAMPLES_PER_APP:
                trace = "\n".join(f"[{s.kind}] {s.content}" for s in out.steps)
                samples.append({"app": name, "prompt": row["question"], "reference": row["answer"],
                                "answer": f"{out.answer}\n--- trace ---\n{trace}"[:4000]})
        per_row.update({f"{name}_accuracy": hits, f"{name}_tokens": tokens, f"{name}_ms": ms,
                        f"{name}_errors": errors})
    first = per_row[f"{suite.apps[0]}_accuracy"]
    for name in suite.apps[1:]:
        per_row[f"{name}_gain"] = [a - b for a, b in zip(per_row[f"{name}_accuracy"], first, strict=True)]
    return SuiteResult({k: sum(v) / len(v) for k, v in per_row.items()}, samples, rows=per_row)
