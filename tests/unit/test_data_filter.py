import gzip
import json

from conftest import write_jsonl

from shipyard.config import DataFilterConfig
from shipyard.data.filter import normalize, run_data_filter
from shipyard.data.shards import read_records

GOOD = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."


def test_malformed_rows_are_quarantined_with_line_and_reason(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_jsonl(raw / "a.jsonl", [
        {"text": GOOD},
        "{not json",
        {"body": "no text key"},
        {"text": 42},
        "[1, 2]",
        {"text": "short"},
        {"text": GOOD},  # exact duplicate
        {"text": "Caf\u0065\u0301 " + GOOD},  # decomposed é, normalized to NFC
    ])
    with open(raw / "b.txt.gz", "wb") as f:
        f.write(gzip.compress(b"\xff\xfe broken bytes\n" + GOOD.upper().encode() + b"\n\n"))
    res = run_data_filter(DataFilterConfig(input=str(raw), min_chars=20), tmp_path / "clean", tmp_path / "q")
    assert res.read == 10
    assert res.kept == 3 and res.quarantined == 5
    assert dict(res.dropped) == {"too_short": 1, "exact_duplicate": 1}
    assert res.kept + sum(res.dropped.values()) + res.quarantined == res.read
    quarantine = [json.loads(line) for line in (tmp_path / "q" / "quarantine.jsonl").read_text().splitlines()]
    reasons = {q["source"]: q["reason"] for q in quarantine}
    assert reasons["a.jsonl:2"].startswith("invalid json")
    assert reasons["a.jsonl:3"] == "missing key 'text'"
    assert reasons["a.jsonl:4"] == "key 'text' is int, not a string"
    assert reasons["a.jsonl:5"] == "row is a list, not an object"
    assert reasons["b.txt.gz:1"].startswith("invalid utf-8")
    clean = [json.loads(line)["text"] for line in (tmp_path / "clean" / "corpus.jsonl").read_text().splitlines()]
    assert "Caf\u00e9 " + GOOD in clean
    stats = json.loads((tmp_path / "clean" / "stats.json").read_text())
    assert stats["dropped.too_short"] == 1
    dropped = (tmp_path / "q" / "dropped.jsonl").read_text()
    assert "exact duplicate" in dropped and "shorter than 20" in dropped


def test_quality_rules(tmp_path):
    rows = [{"text": "$$$ ### 123 456 789 !!! ??? ... ((( )))"},
            {"text": "same line\nsame line\nsame line\nsame line\nother"},
            {"text": GOOD}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    res = run_data_filter(DataFilterConfig(input=str(tmp_path / "r.jsonl"), min_chars=10, min_words=2),
                          tmp_path / "c", tmp_path / "q")
    assert res.kept == 1 and dict(res.dropped) == {"low_alpha_ratio": 1, "repeated_lines": 1}


def test_normalize():
    assert normalize("  a\u00a0\u00a0b \r\n c\t\td  ", "NFC") == "a b\nc d"


def test_read_records_quarantines_rows_missing_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                             {"prompt": "a", "chosen": "b"}, "oops"])
    rows, bad = read_records(path, ("prompt", "chosen", "rejected"))
    assert len(rows) == 1 and [b.source for b in bad] == ["p.jsonl:2", "p.jsonl:3"]
    assert "rejected" in bad[0].reason
