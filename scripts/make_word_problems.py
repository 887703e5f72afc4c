"""Write Shipyard's arithmetic word problems: data/demo/apps/word-problems{,-train}.jsonl.

    .venv/bin/python scripts/make_word_problems.py   # rewrites the files (seeded: the same bytes every time)

Each row is ``{question, answer, steps, program, rationale}``: the answer is an integer, ``steps`` the
number of arithmetic operations (1 to 3), ``program`` a Python program that prints the answer (PAL's
gold trace) and ``rationale`` a worked solution ending in "Answer: N" (chain of thought's). The test
split holds 200 problems, the train split 300; no question is in both. ``app-traces-train.jsonl`` holds
the train split's gold transcripts as chat rows, in the exact prompts the apps send (``shipyard.apps.reasoning``):
one PAL row per problem (the program in a ```python block) and two ReAct rows (calculate the expression, then
finish with the observed result), for fine-tuning on traces.
Templates, names and numbers are Shipyard's own (Apache-2.0, see DATA_LICENSES).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ann", "Ben", "Carla", "Dev", "Eve", "Farid", "Gina", "Hugo", "Ines", "Jon", "Kemi", "Luis", "Mara",
         "Nils", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "beads"]


def _t_buy(r, n, it):
    a, b = r.randint(2, 60), r.randint(2, 40)
    return (f"{n} has {a} {it} and buys {b} more. How many {it} does {n} have now?",
            a + b, f"{it} = {a}\n{it} += {b}\nprint({it})", f"{n} has {a} + {b} = {a + b} {it}.", f"{a} + {b}")


def _t_give(r, n, it):
    a = r.randint(10, 90)
    b = r.randint(1, a - 1)
    return (f"{n} had {a} {it} and gave {b} of them to a friend. How many {it} are left?",
            a - b, f"{it} = {a}\n{it} -= {b}\nprint({it})", f"{n} has {a} - {b} = {a - b} {it} left.", f"{a} - {b}")


def _t_boxes(r, n, it):
    a, b = r.randint(2, 12), r.randint(2, 12)
    return (f"A box holds {a} {it}. How many {it} are in {b} boxes?",
            a * b, f"per_box = {a}\nboxes = {b}\nprint(per_box * boxes)", f"{b} boxes of {a} make {b} * {a} = {a * b}.",
            f"{a} * {b}")


def _t_share(r, n, it):
    each, k = r.randint(2, 15), r.randint(2, 9)
    return (f"{n} shares {each * k} {it} equally among {k} friends. How many {it} does each friend get?",
            each, f"total = {each * k}\nfriends = {k}\nprint(total // friends)",
            f"{each * k} shared by {k} is {each * k} / {k} = {each}.", f"{each * k} // {k}")


def _t_packs(r, n, it):
    a, b = r.randint(2, 9), r.randint(3, 12)
    c = r.randint(1, a * b - 1)
    return (f"{n} buys {a} packs of {b} {it} and then gives away {c}. How many {it} does {n} keep?",
            a * b - c, f"bought = {a} * {b}\nkept = bought - {c}\nprint(kept)",
            f"{a} packs of {b} is {a} * {b} = {a * b}; giving away {c} leaves {a * b} - {c} = {a * b - c}.",
            f"{a} * {b} - {c}")


def _t_chairs(r, n, it):
    a, b = r.randint(3, 15), r.randint(3, 12)
    c = r.randint(1, a * b - 1)
    return (f"A hall has {a} rows of {b} chairs and {c} chairs are taken. How many chairs are free?",
            a * b - c, f"chairs = {a} * {b}\nfree = chairs - {c}\nprint(free)",
            f"There are {a} * {b} = {a * b} chairs; {a * b} - {c} = {a * b - c} are free.", f"{a} * {b} - {c}")


def _t_marbles(r, n, it):
    a, b = r.randint(5, 50), r.randint(2, 30)
    c = r.randint(1, a + b - 1)
    return (f"{n} had {a} {it}, found {b} more and then lost {c}. How many {it} does {n} have?",
            a + b - c, f"{it} = {a} + {b}\n{it} -= {c}\nprint({it})",
            f"{a} + {b} = {a + b}, and {a + b} - {c} = {a + b - c}.", f"{a} + {b} - {c}")


def _t_wage(r, n, it):
    a, b, c = r.randint(8, 25), r.randint(2, 8), r.randint(2, 6)
    return (f"{n} earns {a} dollars an hour and works {b} hours a day for {c} days. How many dollars does {n} earn?",
            a * b * c, f"per_day = {a} * {b}\nprint(per_day * {c})",
            f"Each day is {a} * {b} = {a * b} dollars; {c} days make {a * b} * {c} = {a * b * c}.", f"{a} * {b} * {c}")


def _t_change(r, n, it):
    a, b = r.randint(3, 20), r.randint(2, 5)
    c = a * b + r.randint(1, 30)
    return (f"A shirt costs {a} dollars. {n} buys {b} shirts and pays with {c} dollars. How much change does {n} get?",
            c - a * b, f"cost = {a} * {b}\nprint({c} - cost)",
            f"The shirts cost {b} * {a} = {a * b}; the change is {c} - {a * b} = {c - a * b}.", f"{c} - {a} * {b}")


def _t_train(r, n, it):
    a, b, c = r.randint(20, 90), r.randint(2, 6), r.randint(5, 60)
    return (f"A train travels {a} km each hour for {b} hours and then {c} km more. How far does it travel in all?",
            a * b + c, f"distance = {a} * {b} + {c}\nprint(distance)",
            f"{a} * {b} = {a * b} km, plus {c} is {a * b + c} km.", f"{a} * {b} + {c}")


def _t_split(r, n, it):
    k, each = r.randint(2, 6), r.randint(2, 10)
    extra = r.randint(1, 20)
    return (f"{n} has {k * each + extra} {it}, keeps {extra} and splits the rest equally into {k} bags. "
            f"How many {it} go in each bag?",
            each, f"rest = {k * each + extra} - {extra}\nprint(rest // {k})",
            f"{k * each + extra} - {extra} = {k * each} go into {k} bags: {k * each} / {k} = {each}.",
            f"({k * each + extra} - {extra}) // {k}")


def _t_weeks(r, n, it):
    a, w, c = r.randint(2, 9), r.randint(2, 5), r.randint(1, 20)
    return (f"{n} saves {a} dollars every day for {w} weeks, then spends {c} dollars. How many dollars are left?",
            a * 7 * w - c, f"days = 7 * {w}\nsaved = {a} * days\nprint(saved - {c})",
            f"{w} weeks are {7 * w} days; {a} * {7 * w} = {a * 7 * w}; {a * 7 * w} - {c} = {a * 7 * w - c}.",
            f"{a} * 7 * {w} - {c}")


TEMPLATES = [_t_buy, _t_give, _t_boxes, _t_share, _t_packs, _t_chairs, _t_marbles, _t_wage, _t_change, _t_train,
             _t_split, _t_weeks]
STEPS = {_t_buy: 1, _t_give: 1, _t_boxes: 1, _t_share: 1, _t_packs: 2, _t_chairs: 2, _t_marbles: 2, _t_wage: 2,
         _t_change: 2, _t_train: 2, _t_split: 2, _t_weeks: 3}


def problems(seed: int, n: int, taken: set[str]) -> list[dict]:
    r, rows = random.Random(seed), []
    while len(rows) < n:
        template = TEMPLATES[len(rows) % len(TEMPLATES)]
        question, answer, program, work, expression = template(r, r.choice(NAMES), r.choice(ITEMS))
        if question in taken:
            continue
        taken.add(question)
        rows.append({"question": question, "answer": str(answer), "steps": STEPS[template], "program": program,
                     "expression": expression, "rationale": f"{work} Answer: {answer}"})
    return rows


def traces(rows: list[dict]) -> list[dict]:
    """Gold PAL and ReAct transcripts of ``rows`` as ``{messages}`` rows (the apps' own prompts)."""
    from shipyard.apps.reasoning import PAL_EXAMPLE, PAL_SYSTEM, REACT_SYSTEM, react_example

    react_lead = [{"role": "system", "content": REACT_SYSTEM.format(actions="calculate[input]")},
                  *react_example(["calculate"])]
    out = []
    for r in rows:
        q, expr, answer = r["question"], r["expression"], r["answer"]
        program = f"```python\n{r['program']}\n```"
        out.append({"messages": [{"role": "system", "content": PAL_SYSTEM}, *PAL_EXAMPLE,
                                 {"role": "user", "content": q}, {"role": "assistant", "content": program}]})
        thought = f"I need to compute {expr}."
        scratch = f"Question: {q}\n"
        out.append({"messages": [*react_lead, {"role": "user", "content": scratch + "Thought:"},
                                 {"role": "assistant", "content": f"{thought}\nAction: calculate[{expr}]"}]})
        scratch += f"Thought: {thought}\nAction: calculate[{expr}]\nObservation: {answer}\n"
        out.append({"messages": [*react_lead, {"role": "user", "content": scratch + "Thought:"},
                                 {"role": "assistant",
                                  "content": f"The result is {answer}.\nAction: finish[{answer}]"}]})
    return out


def main(out: Path = Path("data/demo/apps")) -> None:
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for name, seed, n in (("word-problems.jsonl", 23, 200), ("word-problems-train.jsonl", 24, 300)):
        rows = problems(seed, n, taken)
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    with open(out / "app-traces-train.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in traces(rows))


if __name__ == "__main__":
    main()
