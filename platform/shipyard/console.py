"""A console a person can read: the run's own output goes to a log file, the terminal gets one line per stage.

    with quiet_console(log_path) as out:      # fds 1 and 2 (this process and every child) -> log_path
        with StageProgress(log_path, out, total=11, tracking_uri=..., parent_run_id=...):
            run_local(...)                    # executor dumps, library warnings, trace lines: all in the log
        print("the result", file=out)         # the terminal

kfp.local logs ``Executing task 'x'`` and ``Task 'x' finished with status SUCCESS`` for every task;
``StageProgress`` follows the log for those lines and prints each stage with its seconds and key
metric (read back from the stage's MLflow run), under a progress bar.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from pathlib import Path

STARTED = re.compile(r"Executing task '([\w-]+)'")
FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The number a person wants to see when a stage ends (its MLflow metric), by stage.
KEY_METRICS = {
    "data_filter": ("kept", "docs kept"), "train_tokenizer": ("vocab_size", "vocab"),
    "pretrain": ("n_params", "parameters"), "finetune": ("eval_loss", "eval loss"),
    "reward_model": ("pairwise_accuracy", "held-out pair accuracy"), "align": ("win_rate", "win rate vs instruct"),
    "optimize": ("size_ratio", "size x"), "register": ("gate_passed", "gate passed"),
}


@contextlib.contextmanager
def quiet_console(log_path: str | Path):
    """Send fds 1 and 2 (so every child process too) to ``log_path``; yield a stream to the terminal."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    streams = sys.stdout, sys.stderr
    with open(log_path, "ab", buffering=0) as log, open(log_path, "a", buffering=1, encoding="utf-8") as text:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = text  # Python-level writes too, wherever sys.stdout pointed
        try:
            yield terminal
        finally:
            text.flush()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


class StageProgress:
    """Follow a kfp.local log and print one line per finished stage, with a progress bar (rich)."""

    def __init__(self, log_path: str | Path, out, total: int, metric=None, poll_s: float = 0.5):
        self.log_path, self.out, self.total, self.poll_s = Path(log_path), out, total, poll_s
        self.metric = metric or (lambda stage: None)  # stage -> (label, value) or None
        self.started: dict[str, float] = {}
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(file=self.out, force_terminal=self.out.isatty(), highlight=False)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                                 "{task.total}"), TimeElapsedColumn(), console=self.console, transient=True)
        self.task = self.progress.add_task("starting", total=self.total)
        self.progress.start()
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.progress.stop()
        return False

    def _follow(self) -> None:
        while True:
            stopping = self._stop.is_set()
            for line in self._read_new():
                self.on_line(ANSI.sub("", line))
            if stopping:
                return
            time.sleep(self.poll_s)

    def _read_new(self) -> list[str]:
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # whole lines only; the rest waits for the next poll
        self._offset += end
        return data[:end].decode("utf-8", "replace").splitlines()

    def on_line(self, line: str) -> None:
        if m := STARTED.search(line):
            self.started[m.group(1)] = time.monotonic()
            self.progress.update(self.task, description=f"running {m.group(1)}")
        elif m := FINISHED.search(line):
            task, status = m.groups()
            seconds = time.monotonic() - self.started.get(task, time.monotonic())
            stage = task.replace("-", "_")
            shown = self.metric(stage) if status == "SUCCESS" else None
            text = f"{'✓' if status == 'SUCCESS' else '✗'} {task:<18} {status.lower():<8} {seconds:6.1f} s"
            if shown:
                text += f"   {shown[0]} {shown[1]:.4g}"
            self.lines.append(text)
            self.progress.console.print(text)
            self.progress.advance(self.task)


def stage_metric(tracking_uri: str, parent_run_id: str):
    """``metric(stage)`` for StageProgress: the stage's key metric from its MLflow run (None if absent)."""

    def metric(stage: str):
        key = KEY_METRICS.get(stage)
        if key is None:
            return None
        try:
            from shipyard.tracking.lineage import stage_runs
            from shipyard.tracking.runs import client

            c = client(tracking_uri)
            for run in stage_runs(c, c.get_run(parent_run_id)):
                if run.data.tags.get("shipyard.stage") == stage and key[0] in run.data.metrics:
                    return key[1], run.data.metrics[key[0]]
        except Exception:  # noqa: BLE001 - a progress line never stops a run
            return None
        return None

    return metric


class TaskProgress:
    """A progress bar over datatrove's finished tasks while a curation stage runs in this process: each phase's
    executor marks a task done with ``<work>/logs/<phase>/completions/<rank>``; the bar counts them per phase.

        with TaskProgress(work_dir, file=sys.stderr):
            run_data_filter(cfg, out, out / "quarantine", work_dir=work_dir)
    """

    def __init__(self, work: str | Path, file=None, poll_s: float = 0.3):
        self.logs, self.file, self.poll_s = Path(work) / "logs", file, poll_s
        self._stop, self._bar = threading.Event(), None
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        from tqdm import tqdm

        self._bar = tqdm(total=0, unit="task", file=self.file, desc="curation", dynamic_ncols=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self._update()
        self._bar.close()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._update()

    def _update(self) -> None:
        import json

        done = total = 0
        phase = ""
        for folder in sorted(self.logs.glob("*")) if self.logs.exists() else []:
            if folder.name not in self._tasks:
                try:  # written when the phase starts, read once
                    self._tasks[folder.name] = int(json.loads((folder / "executor.json").read_text())["tasks"])
                except (ValueError, OSError, KeyError):
                    continue
            total += self._tasks[folder.name]
            done += len(list((folder / "completions").glob("*"))) if (folder / "completions").exists() else 0
            phase = folder.name
        if not total:  # not started yet, or the work folder is already cleaned up: keep the last count
            return
        self._bar.total = max(total, done)
        self._bar.n = done
        self._bar.set_description(f"curation ({phase})" if phase else "curation")
        self._bar.refresh()
