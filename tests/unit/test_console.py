"""The demo's console: children's output goes to the log, one line per stage reaches the terminal."""

import io
import json
import subprocess
import sys
import time

from shipyard.console import StageProgress, quiet_console
from shipyard.demo import DemoResult, format_stage_table, write_summary
from shipyard.pipeline_runs import RunSummary


def test_everything_but_the_terminal_stream_goes_to_the_log(tmp_path, capfd):
    log = tmp_path / "demo.log"
    with quiet_console(log) as out:
        print("executor input: {huge json}")
        subprocess.run([sys.executable, "-c", "import sys, warnings; print('child stdout'); "
                        "warnings.warn('a library deprecation'); sys.stderr.write('child stderr\\n')"], check=True)
        print("for a person", file=out, flush=True)
    seen = capfd.readouterr()
    assert "for a person" in seen.out
    assert "executor" not in seen.out + seen.err and "child" not in seen.out + seen.err
    text = log.read_text()
    assert "executor input" in text and "child stdout" in text and "child stderr" in text
    assert "a library deprecation" in text
    print("after")  # the process's own stdout is back
    assert "after" in capfd.readouterr().out


def test_stage_progress_prints_one_line_per_finished_task(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("")
    out = io.StringIO()
    out.isatty = lambda: False
    metric = {"finetune": ("eval loss", 1.234)}.get
    with StageProgress(log, out, total=2, metric=metric, poll_s=0.05) as p:
        with open(log, "a") as f:
            f.write("00:00 - INFO - Executing task \x1b[96m'finetune'\x1b[0m\n{'executor': 'noise'}\n")
            f.write("00:01 - INFO - Task \x1b[96m'finetune'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n")
            f.write("00:02 - INFO - Executing task 'align'\n00:03 - INFO - Task 'align' finished with status FAILURE\n")
        time.sleep(0.3)
    assert len(p.lines) == 2
    assert p.lines[0].startswith("✓ finetune") and "eval loss 1.234" in p.lines[0]
    assert p.lines[1].startswith("✗ align") and "failure" in p.lines[1]
    assert "noise" not in out.getvalue()


def test_stage_table_and_summary(tmp_path):
    stages = [
        {"stage": "finetune", "metric": "finetuned.instructions.answer_bpb", "input_model": "base",
         "input_metric": "base.instructions_3shot.answer_bpb",
         "output_model": "finetuned", "input_value": 1.9, "output_value": 1.1, "diff_ci95": [-0.9, -0.7],
         "passed": True},
        {"stage": "reward_model", "metric": "reward_model.pairwise_accuracy", "input_model": "chance",
         "output_model": "reward_model", "input_value": 0.6, "output_value": 0.83, "diff_ci95": [0.13, 0.32],
         "passed": True},
        {"stage": "align", "metric": "alignment.win_rate", "input_model": "floor", "output_model": "alignment",
         "input_value": 0.5, "output_value": 0.72, "diff_ci95": [0.09, 0.33], "passed": True},
        {"stage": "optimize", "metric": "optimization.size_ratio", "input_model": None, "output_model": "optimization",
         "input_value": None, "output_value": 0.5, "diff_ci95": None, "passed": False},
    ]
    table = format_stage_table(stages)
    assert ("| finetune | instructions.answer_bpb | 1.9 (base instructions_3shot) | 1.1 (finetuned) | ↓ better | "
            "[-0.9, -0.7] |") in table
    assert "| align | win_rate | 0.5 (floor) | 0.72 (alignment) | ↑ better |" in table and "✗ failed" in table
    summary = RunSummary("run1", "sqlite:///x.db", 12.0, {"finetune": 3.0}, gate="failed", version="2")
    r = DemoResult(summary, "models:/m@champion", "q?", "an answer.", "ref", "idx@1", "rq?", "ra", [{"index": 1}],
                   stages)
    doc = json.loads(write_summary(r, tmp_path / "summary.json").read_text())
    assert doc["champion_uri"] == "models:/m@champion" and len(doc["stages"]) == 4
    assert set(doc["stages"][0]) == {"stage", "metric", "input_model", "output_model", "input_value",
                                     "output_value", "diff_ci95", "passed", "input_metric"}
    assert doc["chat"] == {"question": "q?", "answer": "an answer.", "reference": "ref"}
    assert doc["rag"]["citations"] == [{"index": 1}]


def test_the_demo_progress_starts_with_the_run_and_stops_with_it(tmp_path, monkeypatch):
    from shipyard import demo

    log, out, seen = tmp_path / "demo.log", io.StringIO(), {}
    out.isatty = lambda: False
    log.write_text("")

    def fake_run_local(pipeline, config, uri, on_start):
        on_start("run1", 1)
        with open(log, "a") as f:
            f.write("Executing task 'optimize'\nTask 'optimize' finished with status SUCCESS\n")
        time.sleep(0.8)
        seen["ran"] = True
        return "summary"

    monkeypatch.setattr(demo, "run_local", fake_run_local)
    monkeypatch.setattr("shipyard.console.stage_metric", lambda uri, run: lambda stage: ("size x", 0.5))
    assert demo._run_pipeline("p.yaml", "sqlite:///unused.db", log, out) == "summary" and seen["ran"]
    assert "✓ optimize" in out.getvalue() and "size x 0.5" in out.getvalue()  # it followed the log, then stopped
