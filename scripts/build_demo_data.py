"""Build Shipyard's small, real, licensed demo corpora into data/demo/.

    python scripts/build_demo_data.py --sources /tmp/shipyard-sources   # fetches sources, then builds

The outputs are committed (a few MB), so users and CI never run this. It is kept so anyone can
rebuild the data from its upstream sources and check what went in. Sources (see DATA_LICENSES):
  * Debian package ``python3.11-doc``  -> Python docs (.rst sources): pretraining prose, RAG FAQ docs
  * Debian package ``fortunes``        -> short quotes as a plain-text shard (one document per line)
  * Debian ``Translation-en`` lists    -> package long description -> one-line synopsis pairs
  * PyPI sdist ``vaderSentiment==3.3.2`` -> human-rated movie-review snippets -> preference pairs
Everything is deterministic: the same sources give byte-identical files.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import tarfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "demo"
SUMMARIZE = "Summarize this Debian package description in one line."


def fetch_sources(src: Path) -> None:
    """Download the Debian packages, the apt Translation-en list and the vaderSentiment sdist."""
    src.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "update", "-qq", "-o", "Acquire::Languages=en"], check=True)
    subprocess.run(["apt-get", "download", "python3.11-doc", "fortunes"], check=True, cwd=src)
    for deb in glob.glob(str(src / "*.deb")):
        subprocess.run(["dpkg", "-x", deb, str(src / "root")], check=True)
    subprocess.run(
        ["python3", "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "vaderSentiment==3.3.2", "-d", str(src)],
        check=True,
    )
    with tarfile.open(src / "vaderSentiment-3.3.2.tar.gz") as sdist:
        sdist.extractall(src, filter="data")
    inner = src / "vaderSentiment-3.3.2" / "additional_resources" / "hutto_ICWSM_2014.tar.gz"
    with tarfile.open(inner) as t:
        t.extractall(src / "vader", filter="data")


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip bytes reproducible.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def python_docs(src: Path, max_chars: int) -> list[dict]:
    """Paragraphs of the tutorial/howto/reference docs merged into ~300-1500 char documents."""
    base = src / "root/usr/share/doc/python3.11/html/_sources"
    files = sorted(
        p for sub in ("tutorial", "howto", "reference", "glossary.rst.txt")
        for p in ((base / sub).rglob("*.rst.txt") if (base / sub).is_dir() else [base / sub])
    )
    docs, total = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        buf = ""
        for para in paras:
            buf = f"{buf}\n\n{para}" if buf else para
            if len(buf) >= 300:
                docs.append({"id": f"pydoc:{path.relative_to(base)}:{len(docs)}",
                             "text": buf[:1500], "source": "python3.11-doc"})
                total += len(buf)
                buf = ""
        if total >= max_chars:
            break
    return docs


def fortunes(src: Path) -> list[str]:
    lines = []
    for name in ("computers", "science", "wisdom", "work", "linux", "education"):
        path = src / "root/usr/share/games/fortunes" / name
        if not path.exists():
            continue
        for item in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            one = " ".join(item.split())
            if one:
                lines.append(one)
    return lines


def debian_pairs(lists_dir: Path) -> list[dict]:
    """(long description -> synopsis) pairs from the apt Translation-en list of bookworm/main."""
    [path] = glob.glob(str(lists_dir / "*_debian_dists_bookworm_main_i18n_Translation-en*"))
    raw = subprocess.run(["lz4cat", path], check=True, capture_output=True).stdout.decode()
    seen, pairs = set(), []
    for block in raw.split("\n\n"):
        m = re.search(r"^Description-en: (.*)\n((?: .*\n?)*)", block, re.M)
        pkg = re.search(r"^Package: (.*)$", block, re.M)
        if not m or not pkg:
            continue
        synopsis = m.group(1).strip()
        body = [ln[1:] for ln in m.group(2).splitlines()]
        # The first paragraph is the package-specific description; " ." separates paragraphs.
        first_para = body[: body.index(".")] if "." in body else body
        first = " ".join(ln.strip() for ln in first_para)
        if not (15 <= len(synopsis) <= 70 and 150 <= len(first) <= 600):
            continue
        key = hashlib.sha1(first.encode()).hexdigest()
        if key in seen:  # many -dev/-doc packages share one description
            continue
        seen.add(key)
        pairs.append({"id": f"debian:{pkg.group(1)}", "instruction": SUMMARIZE,
                      "input": first, "response": synopsis})
    return pairs


def vader_preferences(src: Path) -> list[dict]:
    """Steer toward positive sentiment: for a shared opening, prefer the higher-rated continuation.

    Movie-review snippets are grouped by their first two words (the prompt); within a group every
    snippet rated at least 1.5 points above another gives one (chosen, rejected) pair.
    """
    path = src / "vader/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
    groups: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        words = parts[2].replace("''", '"').split()
        if len(words) < 6 or len(words) > 40:
            continue
        groups[" ".join(words[:2])].append((float(parts[1]), " " + " ".join(words[2:])))
    rng = random.Random(0)
    pairs = []
    for prompt in sorted(groups):
        items = sorted(groups[prompt])
        if len(items) < 2:
            continue
        lows = [x for x in items if x[0] <= -0.5]
        highs = [x for x in items if x[0] >= 1.0]
        rng.shuffle(lows)
        rng.shuffle(highs)
        for (lo, rej), (hi, cho) in zip(lows, highs, strict=False):
            if hi - lo >= 1.5:
                pairs.append({"prompt": f'Continue the movie review that begins: "{prompt}"',
                              "chosen": prompt + cho, "rejected": prompt + rej,
                              "chosen_rating": hi, "rejected_rating": lo})
    return pairs


def cloze_items(docs: list[dict], seed: int = 0) -> list[dict]:
    """A multiple-choice benchmark from held-out documents (HellaSwag's shape, our text).

    Each item's query is a document's opening (up to ~40 words, cut at a word), the gold choice is
    the next 8 words, and three distractors are 8-word spans of other held-out documents. A model
    that learned the docs' language ranks the true continuation first more often than 1 in 4.
    """
    rng = random.Random(seed)
    spans = []
    for d in docs:
        words = " ".join(d["text"].split()).split(" ")
        if len(words) < 20:
            continue
        cut = min(40, len(words) - 8)
        spans.append((d["id"], " ".join(words[:cut]), " " + " ".join(words[cut:cut + 8])))
    items = []
    for i, (doc_id, query, gold) in enumerate(spans):
        others = [s[2] for j, s in enumerate(spans) if j != i]
        choices = rng.sample(others, 3) + [gold]
        rng.shuffle(choices)
        items.append({"id": f"cloze:{doc_id}", "query": query, "choices": choices, "gold": choices.index(gold)})
    return items


def faq_questions(faq_docs: list[dict], per_doc: int = 6, answer_chars: int = 400) -> list[dict]:
    """RAG eval rows from the FAQ documents: each section whose title is a question becomes
    ``{question, answer, source}`` (the answer: the section's first paragraphs, cut at a paragraph
    under ``answer_chars``; source: the document id retrieval should find). Up to ``per_doc``
    questions per document, evenly spaced, so every document is asked about."""
    rows = []
    for doc in faq_docs:
        lines = doc["text"].splitlines()
        found = []
        for i in range(len(lines) - 1):
            title, rule = lines[i].strip(), lines[i + 1].strip()
            if title.endswith("?") and len(rule) >= len(title) and set(rule) <= set("-=~^"):
                body, j = [], i + 2
                while j < len(lines) and not (j + 1 < len(lines) and lines[j + 1].strip()
                                               and set(lines[j + 1].strip()) <= set("-=~^")
                                               and len(lines[j + 1].strip()) >= len(lines[j].strip()) > 0):
                    body.append(lines[j])
                    j += 1
                paras = [" ".join(p.split()) for p in "\n".join(body).split("\n\n")]
                paras = [p for p in paras if p and not p.startswith(("..", "::", ">>>"))]
                answer = ""
                for para in paras:
                    if answer and len(answer) + len(para) > answer_chars:
                        break
                    answer = f"{answer} {para}".strip()
                if len(answer.split()) >= 8:
                    found.append({"question": title, "answer": answer[: answer_chars * 2], "source": doc["id"]})
        step = max(1, len(found) // per_doc)
        rows += found[::step][:per_doc]
    return rows


def split(rows: list, n_test: int, seed: int = 0) -> tuple[list, list]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[n_test:], rows[:n_test]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=Path, default=Path("/tmp/shipyard-sources"))
    ap.add_argument("--skip-fetch", action="store_true", help="sources already fetched")
    args = ap.parse_args()
    if not args.skip_fetch:
        fetch_sources(args.sources)

    docs = python_docs(args.sources, max_chars=1_200_000)
    docs_train, docs_test = split(docs, n_test=60)
    write_jsonl_gz(OUT / "raw" / "python-docs.jsonl.gz", docs_train)
    write_jsonl(OUT / "heldout" / "python-docs.jsonl", docs_test)
    write_jsonl(OUT / "benchmarks" / "python-cloze.jsonl", cloze_items(docs_test))

    quotes = fortunes(args.sources)
    (OUT / "raw").mkdir(parents=True, exist_ok=True)
    (OUT / "raw" / "fortunes.txt").write_text("\n".join(quotes) + "\n", encoding="utf-8")

    pairs = debian_pairs(Path("/var/lib/apt/lists"))
    rng = random.Random(1)
    rng.shuffle(pairs)
    pairs = pairs[:2600]
    sft_train, sft_test = split(pairs, n_test=100)
    write_jsonl(OUT / "instructions" / "train.jsonl", sft_train)
    write_jsonl(OUT / "instructions" / "test.jsonl", sft_test)
    # The long descriptions of the training pairs are prose for pretraining too (never the test ones).
    write_jsonl_gz(OUT / "raw" / "debian-descriptions.jsonl.gz",
                   [{"id": p["id"], "text": p["input"], "source": "debian"} for p in sft_train])

    prefs = vader_preferences(args.sources)
    pref_train, pref_test = split(prefs, n_test=min(60, len(prefs) // 8))
    write_jsonl(OUT / "preferences" / "train.jsonl", pref_train)
    write_jsonl(OUT / "preferences" / "test.jsonl", pref_test)

    faq = args.sources / "root/usr/share/doc/python3.11/html/_sources/faq"
    rag = [{"id": f"faq:{p.name}", "text": p.read_text(encoding="utf-8"), "source": "python3.11-doc"}
           for p in sorted(faq.glob("*.rst.txt"))]
    write_jsonl(OUT / "rag" / "python-faq.jsonl", rag)
    write_jsonl(OUT / "rag" / "python-faq-questions.jsonl", faq_questions(rag))

    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(ROOT)}\t{os.path.getsize(path):>9,d} bytes")
    print(f"docs={len(docs)} fortunes={len(quotes)} sft={len(sft_train)}/{len(sft_test)} "
          f"prefs={len(pref_train)}/{len(pref_test)} rag={len(rag)}")


if __name__ == "__main__":
    main()
