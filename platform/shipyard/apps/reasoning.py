"""Prompt apps as plain functions over one ``chat`` call: direct, few-shot, chain-of-thought, PAL, ReAct.

Each takes ``chat(messages, max_tokens, stop) -> Reply`` (the serving runtime's generation, or any
OpenAI client) and returns an ``AppAnswer``: the answer, every step as a trace, the tokens of all the
model calls together, and an ``error`` when the app could not finish (a step budget spent, a program
that failed twice). They never raise for anything the model writes.

- ``fewshot``: a registered ``PromptSpec``'s system prompt and first ``k`` examples, then the question.
- ``cot``: "think step by step", then the text after the last ``Answer:``.
- ``pal``: the model writes a Python program, ``shipyard.apps.sandbox`` runs it, and the last line it
  prints is the answer. A failed program's error goes back to the model once.
- ``react``: Thought / Action / Observation rounds over ``tools`` (name -> function of one string) until
  ``finish[answer]`` or ``max_steps``. ``Tools`` builds ``search``, ``lookup`` and ``calculate``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from shipyard.apps import sandbox


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


Chat = Callable[[list[dict[str, str]], int, list[str]], Reply]


@dataclass(frozen=True)
class Step:
    kind: str  # thought | action | observation | program | result | answer
    content: str


@dataclass
class AppAnswer:
    answer: str
    steps: list[Step] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    error: str | None = None
    on_step: Callable[[Step], None] | None = field(default=None, repr=False, compare=False)  # sees each step as made

    def ask(self, chat: Chat, messages: list[dict[str, str]], max_tokens: int, stop: list[str] | None = None) -> str:
        reply = chat(messages, max_tokens, stop or [])
        self.count(reply)
        return reply.text

    def count(self, reply: Reply) -> None:
        self.calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens

    def add(self, step: Step) -> None:
        self.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)


_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str:
    """What follows the last ``Answer:`` (its first line), else the last number, else the first line."""
    found = _ANSWER.findall(text)
    if found:
        return _clean(found[-1].strip().splitlines()[0])
    numbers = _NUMBER.findall(text)
    if numbers:
        return _clean(numbers[-1])
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _clean(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    number = _NUMBER.fullmatch(answer.replace(" ", ""))
    return number.group(0).replace(",", "").replace("$", "") if number else answer


def _single(chat: Chat, messages: list[dict[str, str]], max_tokens: int, kind: str = "answer",
            on_step=None) -> AppAnswer:
    """One model call; its answer is what ``extract_answer`` finds in the reply."""
    out = AppAnswer("", on_step=on_step)
    text = out.ask(chat, messages, max_tokens)
    out.add(Step(kind, text))
    out.answer = extract_answer(text)
    return out


def direct(chat: Chat, question: str, max_tokens: int = 64, on_step=None) -> AppAnswer:
    return _single(chat, [{"role": "user", "content": question}], max_tokens, on_step=on_step)


def fewshot(chat: Chat, question: str, spec, k: int | None = None, max_tokens: int = 128, on_step=None,
            pool=None, select: str = "first") -> AppAnswer:
    """``spec`` is a ``shipyard.apps.prompts.PromptSpec`` with one variable, the question. With ``pool``
    (a ``shipyard.apps.examples.ExamplePool``) the ``k`` examples come from it, first or most ``similar``."""
    (variable,) = spec.variables
    examples = pool.pick(question, k, select) if pool is not None else None
    return _single(chat, spec.messages(k, examples, **{variable: question}), max_tokens, on_step=on_step)


COT_SYSTEM = 'Think step by step. Then write the final answer on its own line as "Answer: <answer>".'


def cot(chat: Chat, question: str, max_tokens: int = 256, on_step=None) -> AppAnswer:
    messages = [{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": question}]
    return _single(chat, messages, max_tokens, "thought", on_step)


PAL_SYSTEM = ("Write a short Python program that computes the answer and prints it with print(). "
              "Reply with the program only, in a ```python block.")
PAL_EXAMPLE = [
    {"role": "user", "content": "Ann has 3 apples and buys 2 bags of 4 apples. How many apples does she have?"},
    {"role": "assistant", "content": "```python\napples = 3\nbought = 2 * 4\nprint(apples + bought)\n```"},
]
_CODE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def extract_program(text: str) -> str:
    """The first fenced code block, or the whole reply when there is none."""
    found = _CODE.search(text)
    return (found.group(1) if found else text).strip()


def pal(chat: Chat, question: str, max_tokens: int = 256, timeout_s: float = 5, retries: int = 1,
        on_step=None) -> AppAnswer:
    out = AppAnswer("", on_step=on_step)
    messages = [{"role": "system", "content": PAL_SYSTEM}, *PAL_EXAMPLE, {"role": "user", "content": question}]
    for _ in range(retries + 1):
        text = out.ask(chat, messages, max_tokens)
        program = extract_program(text)
        out.add(Step("program", program))
        res = sandbox.run(program, timeout_s=timeout_s)
        out.add(Step("result", res.stdout if res.ok else f"{res.error}\n{res.stderr[-500:]}".strip()))
        lines = res.stdout.strip().splitlines()
        if res.ok and lines:
            out.answer, out.error = _clean(lines[-1]), None
            return out
        out.error = res.error or "the program printed nothing"
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": f"That program failed: {out.error}. Write a corrected program."}]
    return out


REACT_SYSTEM = ("Answer the question by interleaving Thought, Action and Observation lines. "
                "Actions: {actions}, finish[answer]. Write one Thought and one Action per turn.")
# One worked trajectory before the question (the ReAct paper prompts with a few): small models copy its
# format. With a search tool the example searches; otherwise it calculates. (question, [(thought, action,
# observation), ...]); the last step's action is finish.
REACT_EXAMPLES = {
    "search": ("Which company makes the Zephyr-9 drone?",
               [("I need to find the Zephyr-9 drone.", "search[Zephyr-9 drone]",
                 "[drones.md] The Zephyr-9 is a folding drone made by Aerolab since 2019."),
                ("Aerolab makes it.", "finish[Aerolab]", None)]),
    "calculate": ("Ann has 3 apples and buys 2 bags of 4 apples. How many apples does she have?",
                  [("I need to compute 3 + 2 * 4.", "calculate[3 + 2 * 4]", "11"),
                   ("The result is 11.", "finish[11]", None)]),
}


def react_example(tools) -> list[dict[str, str]]:
    """The example trajectory as the turns ``react`` itself sends and gets: each call's user turn is the
    scratchpad so far, its reply one Thought and Action. Empty when the example's tool is missing."""
    tool = "search" if "search" in tools else "calculate" if "calculate" in tools else None
    if tool is None:
        return []
    question, steps = REACT_EXAMPLES[tool]
    scratch, turns = f"Question: {question}\n", []
    for thought, action, observation in steps:
        turns += [{"role": "user", "content": scratch + "Thought:"},
                  {"role": "assistant", "content": f"{thought}\nAction: {action}"}]
        scratch += f"Thought: {thought}\nAction: {action}\nObservation: {observation}\n"
    return turns


_ACTION = re.compile(r"Action\s*\d*\s*:\s*([A-Za-z_]+)\s*\[([^\n]*)\]")


def _step_text(text: str) -> tuple[str, str | None, str]:
    """(thought, action name or None, action input) of one model turn."""
    thought = re.split(r"\n?\s*Action\s*\d*\s*:", text, maxsplit=1)[0].replace("Thought:", "").strip()
    found = _ACTION.search(text)
    if not found:
        return thought, None, ""
    return thought, found.group(1).lower(), found.group(2).strip()


def react(chat: Chat, question: str, tools: dict[str, Callable[[str], str]], max_steps: int = 5,
          max_tokens: int = 128, observation_chars: int = 600, on_step=None) -> AppAnswer:
    out = AppAnswer("", on_step=on_step)
    system = REACT_SYSTEM.format(actions=", ".join(f"{t}[input]" for t in tools))
    lead = [{"role": "system", "content": system}, *react_example(tools)]
    scratch = f"Question: {question}\n"
    for _ in range(max_steps):
        messages = [*lead, {"role": "user", "content": scratch + "Thought:"}]
        text = out.ask(chat, messages, max_tokens, ["\nObservation:", "Observation:"])
        thought, action, arg = _step_text(text)
        out.add(Step("thought", thought))
        if action == "finish":
            out.add(Step("action", f"finish[{arg}]"))
            out.answer = _clean(arg)
            return out
        if action is None:
            observation = "No action. Write: Action: " + " or ".join(f"{t}[...]" for t in [*tools, "finish"])
        elif action not in tools:
            observation = f"Unknown action {action!r}. Use one of: {', '.join([*tools, 'finish'])}."
        else:
            out.add(Step("action", f"{action}[{arg}]"))
            try:
                observation = str(tools[action](arg))[:observation_chars]
            except Exception as exc:  # a tool's failure is something the model is told, not a crash
                observation = f"{action} failed: {type(exc).__name__}: {exc}"[:observation_chars]
        out.add(Step("observation", observation))
        scratch += f"Thought: {thought}\nAction: {action or ''}[{arg}]\nObservation: {observation}\n"
    out.error = f"step budget of {max_steps} spent without finish[...]"
    return out


class Tools:
    """ReAct's tools: ``search`` (a retriever: query -> [(source, text)]), ``lookup`` (a term in the last
    search result, sentence by sentence, as the ReAct paper's Wikipedia lookup) and ``calculate``
    (the sandbox)."""

    def __init__(self, search: Callable[[str], list[tuple[str, str]]] | None = None, timeout_s: float = 5):
        self._search, self.timeout_s = search, timeout_s
        self._doc, self._term, self._hits = "", "", []

    def as_dict(self) -> dict[str, Callable[[str], str]]:
        found = {"search": self.search, "lookup": self.lookup} if self._search else {}
        return {**found, "calculate": self.calculate}

    def search(self, query: str) -> str:
        results = self._search(query) if query.strip() else []
        if not results:
            self._doc = ""
            return f"No results for {query!r}."
        source, self._doc = results[0]
        self._term, self._hits = "", []
        more = f" (also: {', '.join(s for s, _ in results[1:4])})" if len(results) > 1 else ""
        return f"[{source}] {self._doc}{more}"

    def lookup(self, term: str) -> str:
        if not self._doc:
            return "Nothing to look in: search first."
        if term.lower() != self._term:
            sentences = re.split(r"(?<=[.!?])\s+", self._doc)
            self._term, self._hits = term.lower(), [s for s in sentences if term.lower() in s.lower()]
        if not self._hits:
            return f"No more results for {term!r}."
        return self._hits.pop(0)

    def calculate(self, expression: str) -> str:
        res = sandbox.run(f"print({expression})", timeout_s=self.timeout_s)
        return res.stdout.strip() if res.ok else f"error: {res.error}"
