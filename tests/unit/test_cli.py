"""The CLI's one error handler: a fixable error is one line and exit 2; a preempted run says how to resume, exit 75."""

import os
import signal
import subprocess
import sys
import time

import yaml
from typer.testing import CliRunner

from conftest import REPO, TINY_PRETRAIN


def _run(*args: str):
    from shipyard.cli import app

    return CliRunner().invoke(app, list(args))


def test_a_bad_section_names_file_line_and_key_in_one_line(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("name: x\npretrain:\n  hidden_size: 32\n  learning_rate: 0.1\n")
    result = _run("pretrain", "-c", str(cfg), "--corpus", str(tmp_path), "--tokenizer", str(tmp_path),
                  "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert f"{cfg}:4: pretrain.learning_rate: unknown key" in result.output
    assert "Traceback" not in result.output


def test_missing_config_and_help_keep_their_exit_codes(tmp_path):
    missing = _run("optimize", "-c", str(tmp_path / "nope.yaml"), "--model", str(tmp_path), "--output", str(tmp_path))
    assert missing.exit_code == 2 and f"config file not found: {tmp_path / 'nope.yaml'}" in missing.output
    assert _run("serve", "--help").exit_code == 0  # click's own exits pass through the handler
    usage = _run("serve")
    assert usage.exit_code == 2 and "Missing argument" in usage.output and "error:" not in usage.output


def test_sigterm_during_pretrain_says_where_the_checkpoint_is_and_exits_75(tiny_corpus, tiny_tokenizer, tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"pretrain": {**TINY_PRETRAIN, "max_steps": 400, "checkpoint_every": 5}}))
    ck = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-m", "shipyard.cli", "pretrain", "-c", str(cfg), "--corpus",
                             str(tiny_corpus), "--tokenizer", str(tiny_tokenizer), "--output", str(tmp_path / "m"),
                             "--checkpoint-dir", str(ck)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (ck / "step-000005").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if ln.startswith("preempted:")]
    assert f"checkpoint {ck}/step-" in line and "--checkpoint-dir" in line and "resume" in line
