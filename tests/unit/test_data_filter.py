import gzip
import json
import os

import pytest

from conftest import write_jsonl
from shipyard.data.data_filter import merge_parts, normalize_text, run_data_filter, run_filter_phase, run_merge_phase
from shipyard.data.data_filter_config import DataFilterConfig
from shipyard.data.shards import read_records

GOOD = [
    "The harbour master keeps a careful record of every ship that enters the port, noting the cargo, the crew "
    "and the weather, so that the owners can trace a delayed shipment back to the day it was loaded and the "
    "captain who signed for it. Those records have been kept in the same leather ledgers for more than a century.",
    "A good bread starts with flour, water, salt and patience. The dough is mixed in the evening and left to rise "
    "slowly overnight in a cool room, and in the morning the baker shapes the loaves, lets them rest once more "
    "and bakes them in a hot oven until the crust is dark and crackles as it cools on the rack.",
    "Most garden vegetables prefer a sunny place with rich, well drained soil. Tomatoes and peppers need warmth, "
    "while lettuce and spinach grow happily in the cooler weeks of spring and autumn. Water them early in the day "
    "so the leaves can dry before evening, which keeps many common fungal diseases away from the beds.",
    "The library opened its new reading room last winter. It has tall windows facing north, long oak tables with "
    "green lamps and a quiet corner for children, where volunteers read stories aloud every Saturday morning. "
    "Visitors can borrow up to ten books at a time and return them at any branch of the city network.",
]
GERMAN = ("Der Hafenmeister führt ein sorgfältiges Verzeichnis aller Schiffe, die den Hafen anlaufen, und notiert "
          "die Ladung, die Besatzung und das Wetter, damit die Eigentümer jede verspätete Lieferung "
          "nachverfolgen können.")
SYMBOLS = ("The totals of the test runs with that machine are 123 456 789 101 112 131 415 161 718 192 021 222 324 "
           "252 627 282 930 313 233 343 536 373 839 404 142 434 445 464 748 495 051 525 354 555 657 585 960.")
REPEATED = "\n".join(["The best of the tickets are here and that is all we have to sell with love."] * 12)
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. The rest of this page is still being written by "
         "the editors and will appear here soon, together with photographs of the opening of the new museum wing.")
TOXIC = ("You are a fucking idiot and a piece of shit, and everyone in this damn town knows that you are a stupid "
         "asshole who should shut the hell up and get the fuck out of here before somebody makes you leave.")
PII_DOC = (GOOD[3] + " Questions go to the desk at jane.doe@example.org or +44 20 7946 0958; the card on file is "
           "4111 1111 1111 1111 and refunds go to GB82 WEST 1234 5698 7654 32. Our catalogue server is 192.168.10.20.")
SECRETS = ("jane.doe@example.org", "7946 0958", "4111 1111 1111 1111", "GB82 WEST", "192.168.10.20")

SHORT_DOCS = {"gopher_quality": {"min_doc_words": 5}, "c4_quality": {"min_num_sentences": 1},
              "gopher_repetition": {"top_n_grams": [[2, 0.3], [3, 0.3], [4, 0.3]]}}


def _near_dup(text: str) -> str:
    return text.replace("careful record", "careful register", 1)


def _counts(res) -> dict:
    return {k: v for k, v in res.metrics().items() if not k.endswith("seconds") and k != "docs_per_s"}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(tmp_path, input_path, **cfg):
    res = run_data_filter(DataFilterConfig(input=str(input_path), **cfg), tmp_path / "clean", tmp_path / "q")
    assert res.kept + sum(res.dropped.values()) + res.quarantined == res.read
    return res


def test_every_filter_drops_its_crafted_document_and_pii_never_reaches_disk(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_jsonl(raw / "a.jsonl", [{"text": t} for t in [GOOD[0], GOOD[1], GERMAN, "too short", SYMBOLS, REPEATED]])
    write_jsonl(raw / "b.jsonl", [{"text": t} for t in [GOOD[2], PII_DOC, LOREM, TOXIC, GOOD[1], _near_dup(GOOD[0])]])
    res = _run(tmp_path, raw, length={"min_chars": 40, "min_words": 5}, **SHORT_DOCS)

    assert res.read == 12 and res.quarantined == 0
    assert res.dropped == {"language": 1, "too_short": 1, "gopher_below_alpha_threshold": 1,
                           "dup_line_frac": 1, "lorem_ipsum": 1, "toxic": 1,
                           "exact_duplicate": 1, "near_duplicate": 1}
    kept = _rows(tmp_path / "clean" / "corpus.jsonl")
    assert len(kept) == res.kept == 4
    assert {k["source"] for k in kept} == {"a.jsonl:1", "a.jsonl:2", "b.jsonl:1", "b.jsonl:2"}
    scrubbed = next(k for k in kept if k["source"] == "b.jsonl:2")
    for placeholder in ("<EMAIL>", "<PHONE>", "<CREDIT_CARD>", "<IBAN>", "<IP_ADDRESS>"):
        assert placeholder in scrubbed["text"]
    assert scrubbed["pii"] == {"email": 1, "phone": 1, "credit_card": 1, "iban": 1, "ip": 1}
    assert dict(res.pii) == {"email": 1, "phone": 1, "credit_card": 1, "iban": 1, "ip": 1}
    assert all(k["language"] == "en" and 0 <= k["toxicity"] < 0.8 for k in kept)

    dropped = _rows(tmp_path / "q" / "dropped.jsonl")
    assert {(d["source"], d["step"]) for d in dropped} >= {("a.jsonl:3", "language"), ("b.jsonl:4", "toxicity"),
                                                           ("b.jsonl:5", "exact_dedup"), ("b.jsonl:6", "minhash_dedup")}
    everything = "".join(p.read_text(errors="replace") for p in (tmp_path / "clean").rglob("*") if p.is_file()
                         and p.suffix != ".png") + (tmp_path / "q" / "dropped.jsonl").read_text()
    assert not any(secret in everything for secret in SECRETS)

    stats = json.loads((tmp_path / "clean" / "stats.json").read_text())
    assert stats["pii.email"] == 1 and sum(stats["toxicity_histogram"]) == 7  # docs reaching the toxicity step
    assert stats["dedup.near_dup_clusters"] == 1
    table = (tmp_path / "clean" / "drop_table.md").read_text()
    assert "| language | 11 | 10 | 1 |" in table and "| near_duplicate | 1 |" in table
    assert (tmp_path / "clean" / "toxicity_hist.png").stat().st_size > 1000
    assert not (tmp_path / "clean" / "_work").exists()


def test_bad_input_is_quarantined_with_file_line_and_reason(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_jsonl(raw / "a.jsonl", [{"text": GOOD[0]}, "{not json", {"body": "no text key"}, {"text": 42}, "[1, 2]",
                                  {"text": "Caf\u0065\u0301 au lait " + GOOD[1]}])
    (raw / "b.txt.gz").write_bytes(gzip.compress(b"\xff\xfe broken bytes\n" + GOOD[2].encode() + b"\n\n"))
    (raw / "c.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00binary")
    (raw / "d.jsonl").write_bytes(b"")
    (raw / "e.txt").write_bytes(GOOD[3].encode("utf-16"))
    (raw / "f.jsonl.gz").write_bytes(gzip.compress(json.dumps({"text": GOOD[3]}).encode() * 50)[:40])
    res = _run(tmp_path, raw, steps=["normalize", "pii", "length", "exact_dedup"])
    reasons = {q["source"]: q["reason"] for q in _rows(tmp_path / "q" / "quarantine.jsonl")}
    assert reasons["a.jsonl:2"].startswith("invalid json")
    assert reasons["a.jsonl:3"] == "missing key 'text'"
    assert reasons["a.jsonl:4"] == "key 'text' is int, not a string"
    assert reasons["a.jsonl:5"] == "row is a list, not an object"
    assert reasons["b.txt.gz:1"].startswith("invalid utf-8")
    assert reasons["c.txt:0"].startswith("NUL bytes") and reasons["e.txt:0"].startswith("NUL bytes")
    assert reasons["d.jsonl:0"] == "no rows"
    assert "f.jsonl.gz:" in " ".join(reasons)
    assert res.quarantined == len(reasons) == 9
    assert res.quarantine_kinds["binary_file"] == 2 and res.quarantine_kinds["empty_file"] == 1
    kept = [k["text"] for k in _rows(tmp_path / "clean" / "corpus.jsonl")]
    assert "Caf\u00e9 au lait " + GOOD[1] in kept and GOOD[2] in kept and len(kept) == res.kept == 3


def test_toxicity_tag_mode_keeps_and_tags(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"text": TOXIC}, {"text": GOOD[0]}])
    res = _run(tmp_path, tmp_path / "t.jsonl", steps=["toxicity"], toxicity={"action": "tag", "threshold": 0.5})
    kept = _rows(tmp_path / "clean" / "corpus.jsonl")
    assert res.kept == 2 and [k.get("toxic", False) for k in kept] == [True, False]
    assert kept[0]["toxicity"] > 0.5 > kept[1]["toxicity"]


def test_fan_out_parts_merge_to_the_single_run_result(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(4):  # shard i repeats shard i-1's first doc exactly and near-duplicates another
        write_jsonl(raw / f"s{i}.jsonl", [{"text": GOOD[i]}, {"text": GOOD[i - 1]}, {"text": _near_dup(GOOD[0])}])
    cfg = DataFilterConfig(input=str(raw), steps=["normalize", "length", "exact_dedup", "minhash_dedup"],
                           workers=2, fan_out=2)
    single = run_data_filter(cfg, tmp_path / "single" / "clean", tmp_path / "single" / "q")
    for shard in range(2):
        assert run_filter_phase(cfg, tmp_path / f"part{shard}", shard=shard, fan_out=2) == 4
    assert sorted(p.name for p in (tmp_path / "part1" / "filtered").iterdir()) == ["00002.jsonl.gz", "00003.jsonl.gz"]
    merge_parts([tmp_path / "part0", tmp_path / "part1"], tmp_path / "merged")
    merged = run_merge_phase(cfg, tmp_path / "merged", tmp_path / "fan" / "clean", tmp_path / "fan" / "q")
    assert _counts(merged) == _counts(single)
    assert single.kept == 4 and single.dropped == {"exact_duplicate": 7, "near_duplicate": 1}
    assert ((tmp_path / "fan" / "clean" / "corpus.jsonl").read_text()
            == (tmp_path / "single" / "clean" / "corpus.jsonl").read_text())


def test_an_interrupted_run_resumes_and_skips_finished_tasks(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        write_jsonl(raw / f"s{i}.jsonl", [{"text": GOOD[i]}, {"text": GOOD[3]}])
    cfg = DataFilterConfig(input=str(raw), steps=["normalize", "length", "exact_dedup"])
    first = run_data_filter(cfg, tmp_path / "c1", tmp_path / "q1", work_dir=tmp_path / "work", keep_work=True)
    work = tmp_path / "work"
    # simulate a crash of task 1: its completion marker and output are gone
    (work / "logs" / "filter" / "completions" / "00001").unlink()
    (work / "filtered" / "00001.jsonl.gz").unlink()
    before = {r: os.stat(work / "filtered" / f"{r:05d}.jsonl.gz").st_mtime_ns for r in (0, 2)}
    second = run_data_filter(cfg, tmp_path / "c2", tmp_path / "q2", work_dir=work, keep_work=True)
    assert {r: os.stat(work / "filtered" / f"{r:05d}.jsonl.gz").st_mtime_ns for r in (0, 2)} == before
    assert (work / "filtered" / "00001.jsonl.gz").exists()
    assert _counts(first) == _counts(second)
    assert (tmp_path / "c1" / "corpus.jsonl").read_text() == (tmp_path / "c2" / "corpus.jsonl").read_text()


def test_normalize_text():
    assert normalize_text("  a\u00a0\u00a0b \r\n c\t\td  ", "NFC") == "a b\nc d"
    assert normalize_text("caf\u00c3\u00a9 \u201cquoted\u201d", "NFC", fix_mojibake=True) == "café \u201cquoted\u201d"


def test_read_records_quarantines_rows_missing_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                             {"prompt": "a", "chosen": "b"}, "oops"])
    rows, bad = read_records(path, ("prompt", "chosen", "rejected"))
    assert len(rows) == 1 and [b.source for b in bad] == ["p.jsonl:2", "p.jsonl:3"]
    assert "rejected" in bad[0].reason


def test_config_rejects_a_language_to_keep_that_is_not_a_candidate():
    with pytest.raises(ValueError, match=r"keep languages \['sv'\] are not among candidates"):
        DataFilterConfig(input=".", language={"keep": ["sv"], "candidates": ["en", "de"]})


def test_rows_whose_text_normalizes_to_nothing_are_dropped_not_fatal(tmp_path):
    """Issue 22: a row that is empty, blank, only newlines or only a NUL escape ended the run with KeyError 'text'
    (datatrove's writer dropped the empty field); now each is dropped by the length step with its text."""
    raw = tmp_path / "raw"
    raw.mkdir()
    empties = ["", "   ", "\n\n\n", "\u0000"]
    write_jsonl(raw / "a.jsonl", [{"text": GOOD[0]}, *({"text": t} for t in empties), {"text": GOOD[1]}])
    res = _run(tmp_path, raw, steps=["normalize", "length", "exact_dedup"])
    assert res.kept == 2 and res.read == 6
    dropped = _rows(tmp_path / "q" / "dropped.jsonl")
    assert len(dropped) == 4 and {d["step"] for d in dropped} == {"length"}
    assert all(isinstance(d["text"], str) and not d["text"].strip("\x00 \n") for d in dropped)
    assert [k["text"] for k in _rows(tmp_path / "clean" / "corpus.jsonl")] == GOOD[:2]


def test_sources_name_the_path_and_no_file_or_good_row_is_lost(tmp_path):
    """Issue 22: file:line names the path under the input (two folders' part-00000 stay apart); files no reader
    takes are quarantined, not skipped; a BOM does not spoil the first row; one NUL in a text shard's first
    8 KB loses that line's problem only, not the file's good lines."""
    raw = tmp_path / "raw"
    for region in ("east", "west"):
        (raw / region).mkdir(parents=True)
        write_jsonl(raw / region / "part-00000.jsonl", ["{broken", {"text": GOOD[0 if region == "east" else 1]}])
    (raw / "table.csv").write_text("text\nhello\n")
    (raw / "notes.json").write_text('{"text": "x"}')
    (raw / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": GOOD[2]}).encode() + b"\n")
    (raw / "nul.txt").write_bytes((GOOD[3] + "\n").encode() + b"a stray \x00 byte in a line\n" + b"x" * 9000 + b"\n")
    res = _run(tmp_path, raw, steps=["normalize", "length", "exact_dedup"])
    reasons = {q["source"]: q["reason"] for q in _rows(tmp_path / "q" / "quarantine.jsonl")}
    assert reasons["east/part-00000.jsonl:1"].startswith("invalid json")
    assert reasons["west/part-00000.jsonl:1"].startswith("invalid json")
    assert reasons["table.csv:0"].startswith("no reader for this file type") and "notes.json:0" in reasons
    assert res.quarantine_kinds["unsupported_file"] == 2 and "binary_file" not in res.quarantine_kinds
    kept = {k["text"] for k in _rows(tmp_path / "clean" / "corpus.jsonl")}
    assert {GOOD[0], GOOD[1], GOOD[2], GOOD[3]} <= kept  # the BOM row and the NUL shard's good line survive


def test_shipyard_filter_and_train_tokenizer_run_the_stages_from_the_command_line(tmp_path):
    """Issue 22: curation alone, without a profile or a pipeline: the same stage functions, the drop table."""
    import subprocess
    import sys

    raw = tmp_path / "raw"
    raw.mkdir()
    write_jsonl(raw / "a.jsonl", [{"text": t} for t in GOOD] + [{"text": GOOD[0]}, "{bad"])
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "shipyard.cli", "filter", str(raw), "-o", str(out), "--steps",
                          "normalize,length,exact_dedup"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "exact_dedup" in run.stdout and "kept 4 of 6 rows (1 dropped, 1 quarantined)" in run.stdout
    assert "curation" in run.stderr and "task" in run.stderr  # the progress bar
    assert len(_rows(out / "corpus.jsonl")) == 4 and _rows(out / "quarantine" / "quarantine.jsonl")
    assert not (out / "_work").exists()
    bad = subprocess.run([sys.executable, "-m", "shipyard.cli", "filter", str(raw), "-o", str(out), "--steps",
                          "normalize,nonsense"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nonsense" in bad.stderr and "Traceback" not in bad.stderr
    cfg = tmp_path / "t.yaml"
    cfg.write_text("train_tokenizer:\n  vocab_size: 300\n  heldout_every: 2\n")
    tok = subprocess.run([sys.executable, "-m", "shipyard.cli", "train-tokenizer", str(out), "-o",
                          str(tmp_path / "tok"), "-c", str(cfg)], capture_output=True, text=True, timeout=300)
    assert tok.returncode == 0, tok.stderr
    assert "vocab_size" in tok.stdout and (tmp_path / "tok" / "tokenizer.json").exists()
