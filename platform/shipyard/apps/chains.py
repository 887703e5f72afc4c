"""Document chains, LangChain's three: answers over retrieved documents, as plain functions over ``chat``.

- ``stuff``: every document in one prompt, one call. Cheapest; limited by the context.
- ``refine``: an answer from the first document, then one call per further document that keeps or
  revises it. Sequential; each call sees one document and the draft.
- ``map_reduce``: one call per document extracting what bears on the question (``NONE`` when
  nothing does; those are dropped), issued ``parallel`` at a time so the engine batches them, then one
  call that answers from the extracts.

``docs`` are ``(source, text)`` pairs, best first. Each returns an ``AppAnswer`` whose steps are every
call's output (kinds ``draft``, ``extract``, ``answer``) and whose answer is the last call's reply.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from shipyard.apps.reasoning import AppAnswer, Chat, Step

STUFF = "Documents:\n{docs}\nAnswer the question from the documents, citing them as [1].\nQuestion: {question}"
REFINE_FIRST = "Document [1]:\n{doc}\nAnswer the question from the document.\nQuestion: {question}"
REFINE_NEXT = ("Question: {question}\nCurrent answer: {draft}\nAnother document [{n}]:\n{doc}\n"
               "Improve the current answer with this document if it helps; otherwise repeat the current answer. "
               "Reply with the answer only.")
MAP = ("Document:\n{doc}\nCopy the sentences of the document that help answer the question. "
       "If none do, reply NONE.\nQuestion: {question}")
REDUCE = "Notes:\n{notes}\nAnswer the question from the notes, citing them as [1].\nQuestion: {question}"


def _numbered(texts: list[str]) -> str:
    return "".join(f"[{i}] {t}\n" for i, t in enumerate(texts, 1))


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _no_docs(question: str) -> AppAnswer:
    return AppAnswer("", error=f"no documents were retrieved for {question[:80]!r}")


def stuff(chat: Chat, question: str, docs: list[tuple[str, str]], max_tokens: int = 128, on_step=None) -> AppAnswer:
    if not docs:
        return _no_docs(question)
    out = AppAnswer("", on_step=on_step)
    out.answer = out.ask(chat, _user(STUFF.format(docs=_numbered([t for _, t in docs]), question=question)),
                         max_tokens).strip()
    out.add(Step("answer", out.answer))
    return out


def refine(chat: Chat, question: str, docs: list[tuple[str, str]], max_tokens: int = 128, on_step=None) -> AppAnswer:
    if not docs:
        return _no_docs(question)
    out = AppAnswer("", on_step=on_step)
    draft = out.ask(chat, _user(REFINE_FIRST.format(doc=docs[0][1], question=question)), max_tokens).strip()
    out.add(Step("draft", draft))
    for n, (_, doc) in enumerate(docs[1:], 2):
        revised = out.ask(chat, _user(REFINE_NEXT.format(question=question, draft=draft, n=n, doc=doc)),
                          max_tokens).strip()
        draft = revised or draft  # an empty revision keeps the draft
        out.add(Step("draft", draft))
    out.answer = draft
    return out


def _is_none(extract: str) -> bool:
    return not extract or extract.upper().rstrip(".").strip() == "NONE"


def map_reduce(chat: Chat, question: str, docs: list[tuple[str, str]], max_tokens: int = 128, parallel: int = 4,
               on_step=None) -> AppAnswer:
    if not docs:
        return _no_docs(question)
    out = AppAnswer("", on_step=on_step)
    prompts = [_user(MAP.format(doc=doc, question=question)) for _, doc in docs]
    with ThreadPoolExecutor(max(1, min(parallel, len(prompts)))) as pool:
        replies = list(pool.map(lambda m: chat(m, max_tokens, []), prompts))
    extracts = []
    for reply in replies:
        out.count(reply)
        text = reply.text.strip()
        out.add(Step("extract", text))
        if not _is_none(text):
            extracts.append(text)
    if not extracts:
        out.error = "no document had anything on the question"
        return out
    out.answer = out.ask(chat, _user(REDUCE.format(notes=_numbered(extracts), question=question)), max_tokens).strip()
    out.add(Step("answer", out.answer))
    return out


CHAINS = {"stuff": stuff, "refine": refine, "map_reduce": map_reduce}
