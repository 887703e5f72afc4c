"""evaluate stage: every model of the run on the same eval spec, one table and one HTML report.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml   # before register
    shipyard eval pipelines/configs/tiny-cpu.yaml --model aligned=DIR --reward-model DIR

Suite data is loaded and checked before any model is (a bad reference row stops the run with its
file:line). Each model is loaded once, on ``spec.device`` (a GPU when there is one, unless the
model is quantized for the CPU), and runs every suite; a model with a GGUF export runs as llama.cpp serves
it (``spec.engine``: auto picks it on the CPU). The table is
``{model: {"<suite>.<metric>": value}}``. Win rates compare each model's per-prompt rewards with
the spec's baseline model; ``<suite>.perplexity_ratio`` compares a model with the model it was
made from (``sources``: optimized -> aligned in the lifecycle).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from shipyard.eval.evaluate_config import EvalSpec
from shipyard.eval.result import ALIGNMENT_ROW, STAGE_ROWS, STAGE_TITLES  # noqa: F401  (rows that are not models)

ROWS_FILE, CI_FILE = "eval_rows.json", "eval_ci.json"


def run_evaluate(spec: EvalSpec, models: dict[str, str | Path], output_dir: str | Path,
                 reward_model_dir: str | Path | None = None, sources: dict[str, str] | None = None,
                 reports: dict[str, str | Path] | None = None, rag_index: str | None = None,
                 feast_repo: str | Path | None = None, tracking_uri: str | None = None) -> dict[str, dict[str, float]]:
    """Evaluate each ``{name: model_dir}`` on every suite of ``spec``.

    Writes ``eval.json`` (the table), ``eval_rows.json`` (each metric's per-row scores, in row
    order, for paired comparisons), ``eval_ci.json`` (each such metric's 95% bootstrap interval),
    ``eval.md``, ``timings.json`` (examples/s and each model's device), ``samples.jsonl`` and the
    self-contained ``report.html`` to ``output_dir``.
    ``reports`` ``{row: json_path}`` (a ``STAGE_ROWS`` name: the align stage's instruct-vs-aligned
    judgement, the reward model's held-out accuracy, the optimize stage's ratios) become table rows.
    ``rag`` suites search ``rag_index`` (NAME or NAME@VERSION) in the Feast repo ``feast_repo``; an ``app``
    suite's ``NAME@ALIAS`` prompt is read from the registry at ``tracking_uri`` (default: MLFLOW_TRACKING_URI),
    and where each app suite's prompt came from is ``timings.json``'s ``prompts``.

    Returns:
        ``{model_name: {"<suite>.<metric>": value}}``.
    """
    from shipyard.eval.report import write_report

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data, reward = _prepare(spec, models, reward_model_dir, rag_index, feast_repo, tracking_uri)
    table, rows, timings, devices, per_prompt = _measure(spec, models, data, reward, output_dir / "samples.jsonl")
    _derived_rows(spec, table, rows, per_prompt, sources or {}, reports or {})
    ci = intervals(rows)
    (output_dir / "eval.json").write_text(json.dumps(table, indent=2))
    (output_dir / ROWS_FILE).write_text(json.dumps(rows))
    (output_dir / CI_FILE).write_text(json.dumps(ci, indent=2))
    prompts = {s.name: data[s.name].prompt_source for s in spec.of_kind("app") if data[s.name].prompt_source}
    (output_dir / "timings.json").write_text(json.dumps({"examples_per_s": timings, "device": devices,
                                                         "prompts": prompts}, indent=2))
    (output_dir / "eval.md").write_text(format_table(table, devices, ci))
    write_report(output_dir, spec, table, timings, sources or {}, devices, ci)
    return table


def _prepare(spec: EvalSpec, models: dict, reward_model_dir, rag_index: str | None, feast_repo,
             tracking_uri: str | None = None):
    """(suite data, reward scorer): everything checked and loaded before the first model, so a bad
    input fails before any work."""
    from shipyard.eval.suites import load_suite_data
    from shipyard.models.device import inference_device
    from shipyard.models.engines import choose_engine

    if spec.baseline and spec.of_kind("reward") and spec.baseline not in models:
        raise ValueError(f"evaluate.baseline {spec.baseline!r} is not among the evaluated models: {sorted(models)}")
    for path in models.values():  # a model that cannot run on spec.device fails before any work
        inference_device(spec.device, path)
        choose_engine(Path(path), spec.engine, spec.device, (Path(path) / "adapter_config.json").exists())
    if spec.of_kind("rag") and not rag_index:
        raise ValueError(f"suites {[s.name for s in spec.of_kind('rag')]} (rag) need a RAG index: the lifecycle "
                         f"passes the one its rag: section builds; shipyard eval takes --rag-index NAME@VERSION")
    searching = [s.name for s in spec.of_kind("app") if s.searches]
    if searching and not rag_index:
        raise ValueError(f"suites {searching} (app: react with search) need a RAG index: the lifecycle passes the "
                         f"one its rag: section builds; shipyard eval takes --rag-index NAME@VERSION")
    data = load_suite_data(spec)
    for suite in spec.of_kind("app"):  # the prompt and the index are resolved before any model loads
        _app_inputs(suite, data[suite.name], rag_index, feast_repo, tracking_uri)
    if spec.of_kind("rag"):
        from shipyard.eval.rag_suite import retrieve

        for suite in spec.of_kind("rag"):  # the same for every model: searched once, before any model loads
            data[suite.name] = retrieve(data[suite.name], suite, rag_index, feast_repo)
    reward = None
    if spec.of_kind("reward"):
        if reward_model_dir is None:
            raise ValueError(f"suites {[s.name for s in spec.of_kind('reward')]} need a reward model")
        from shipyard.train.rl_rewards import RewardModelScorer

        reward = RewardModelScorer(reward_model_dir, spec.context_length, device=spec.device)
    return data, reward


def _app_inputs(suite, rows, rag_index: str | None, feast_repo, tracking_uri: str | None) -> None:
    """An app suite's fewshot prompt (a file, or NAME@ALIAS: loaded inside the stage's MLflow run, it is linked
    to the run) and ReAct's search over the RAG index."""
    if suite.prompt:
        from shipyard.apps.examples import ExamplePool
        from shipyard.apps.prompts import resolve

        rows.prompt, rows.prompt_source = resolve(suite.prompt, tracking_uri)
        rows.pool = ExamplePool.from_file(suite.examples) if suite.examples else ExamplePool(rows.prompt.examples)
    if suite.searches:
        from shipyard.eval.app_suite import searcher

        rows.search = searcher(suite, rag_index, feast_repo)


def _measure(spec: EvalSpec, models: dict, data: dict, reward, samples_path: Path):
    """Every model on every suite, one model loaded at a time; samples go to ``samples_path``."""
    from shipyard.eval.suites import run_suite
    from shipyard.models.causal_lm import load_tokenizer
    from shipyard.models.device import bf16_autocast

    table: dict[str, dict[str, float]] = {}
    rows: dict[str, dict[str, list]] = {}
    timings: dict[str, dict[str, float]] = {}
    devices: dict[str, str] = {}
    per_prompt: dict[tuple[str, str], list[float]] = {}
    with open(samples_path, "w", encoding="utf-8") as f:
        for name, path in models.items():
            (model, where, devices[name]), tok = _load(spec, Path(path)), load_tokenizer(path)
            table[name], rows[name], timings[name] = {}, {}, {}
            for suite in (s for s in spec.suites if spec.runs(s, name)):
                t0 = time.perf_counter()
                with bf16_autocast(suite.precision == "bf16", where):
                    result = run_suite(suite, data[suite.name], model, tok, spec, reward)
                seconds = time.perf_counter() - t0
                timings[name][suite.name] = len(data[suite.name]) / seconds if seconds > 0 else float("inf")
                table[name].update({f"{suite.name}.{k}": v for k, v in result.metrics.items()})
                rows[name].update({f"{suite.name}.{k}": v for k, v in result.rows.items()})
                if result.per_prompt:
                    per_prompt[(name, suite.name)] = result.per_prompt
                source = getattr(data[suite.name], "prompt_source", "")
                for s in result.samples:
                    f.write(json.dumps({"model": name, "suite": suite.name, **s, **({"prompt_source": source}
                                        if source else {})}, ensure_ascii=False) + "\n")
            getattr(model, "close", lambda: None)()
            del model
    return table, rows, timings, devices, per_prompt


def _load(spec: EvalSpec, path: Path):
    """(model, torch device, the device as the report names it): a model directory with a GGUF is loaded as
    ``shipyard serve`` would decode it (``spec.engine``, models.engines.choose_engine), else by transformers."""
    from shipyard.models.device import load_for_inference
    from shipyard.models.engines import choose_engine

    engine, gguf = choose_engine(path, spec.engine, spec.device, (path / "adapter_config.json").exists())
    if engine == "llamacpp":
        from shipyard.models.gguf_model import GGUFModel

        model = GGUFModel(gguf, path)
        return model, "cpu", f"cpu (llama.cpp {model.kind})"
    model, where = load_for_inference(path, spec.device)
    return model, where, where


def intervals(rows: dict[str, dict[str, list]]) -> dict[str, dict[str, list[float]]]:
    """The 95% bootstrap interval of every metric that has per-row scores."""
    from shipyard.eval.stats import metric_ci

    return {name: {key: list(metric_ci(key, r)) for key, r in metrics.items() if r}
            for name, metrics in rows.items()}


def _derived_rows(spec: EvalSpec, table: dict, rows: dict, per_prompt: dict, sources: dict[str, str],
                  reports: dict) -> None:
    """What needs several models: win rates against the baseline, perplexity and bits-per-byte ratios,
    the alignment row."""
    from shipyard.eval.suites import win_rate_rows

    for suite in spec.of_kind("reward"):
        base = per_prompt.get((spec.baseline, suite.name)) if spec.baseline else None
        for name in list(table):
            if base is not None and name != spec.baseline and (name, suite.name) in per_prompt:
                wins = win_rate_rows(per_prompt[(name, suite.name)], base)
                table[name][f"{suite.name}.win_rate"] = sum(wins) / len(wins)
                rows[name][f"{suite.name}.win_rate"] = wins
    for name, source in sources.items():
        if name in table and source in table:
            for suite in spec.of_kind("perplexity"):
                for metric in ("perplexity", "bpb"):
                    key = f"{suite.name}.{metric}"
                    if key in table[name] and key in table[source]:
                        table[name][f"{key}_ratio"] = table[name][key] / table[source][key]
    for row, path in reports.items():
        if path and Path(path).exists():
            report = json.loads(Path(path).read_text())
            table[row] = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            rows[row] = report.get("rows", {})


def format_table(table: dict[str, dict[str, float]], devices: dict[str, str] | None = None,
                 ci: dict[str, dict[str, list[float]]] | None = None) -> str:
    """A markdown table: one row per metric, one column per model (the alignment row apart), each value
    with its 95% interval where it has one, then where each model ran (latencies compare only on one device)."""
    models = [m for m in table if m not in STAGE_ROWS]
    metrics = list(dict.fromkeys(k for m in models for k in table[m]))
    ci = ci or {}
    lines = ["| metric | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for key in metrics:
        cells = [_fmt(table[m].get(key)) + _fmt_ci(ci.get(m, {}).get(key)) for m in models]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    for row in STAGE_ROWS:
        if row in table:
            lines += ["", f"{STAGE_TITLES[row]}:", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)}{_fmt_ci(ci.get(row, {}).get(k))} |" for k, v in table[row].items()]
    if devices:
        lines += ["", "Devices: " + ", ".join(f"{m} on {d}" for m, d in devices.items())]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def _fmt_ci(interval) -> str:
    return "" if interval is None else f" [{interval[0]:.3g}, {interval[1]:.3g}]"
