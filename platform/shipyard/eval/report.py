"""The eval report: one self-contained HTML file (inline CSS, plots as inline PNG, no scripts).

Per suite: a metric x model table and a bar chart per metric; then the align stage's judgement,
the examples/s of every suite, and sample answers. Overlap metrics (ROUGE, BLEU, chrF, exact
match) carry the caveat that they are diagnostics, and sit in the same section as the rest.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from pathlib import Path

from shipyard.eval.evaluate_config import EvalSpec

OVERLAP = {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match"}
LOWER_IS_BETTER = {"perplexity", "perplexity_ratio", "rate", "mean_probability", "ms_per_token", "first_token_ms",
                   "answer_perplexity", "answer_perplexity_rag"}
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.5rem} h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f4f4f4}
.best{font-weight:600;background:#eef7ee} .note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem .8rem}
.meta{color:#666} pre{white-space:pre-wrap;background:#f8f8f8;padding:.4rem;margin:.2rem 0;font-size:.85rem}
img{max-width:100%}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _chart(models: list[str], keys: list[str], table: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(keys), 4)
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys, strict=False):
        values = [table[m].get(key, float("nan")) for m in models]
        ax.bar(range(len(models)), values, color="#4a7ab5")
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        metric = key.split(".", 1)[1]
        ax.set_title(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def _metric_table(models: list[str], keys: list[str], table: dict, ci: dict) -> str:
    rows = ["<tr><th>metric</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in models) + "</tr>"]
    for key in keys:
        metric = key.split(".", 1)[1]
        values = [table[m].get(key) for m in models]
        known = [v for v in values if v is not None]
        # shade the best only where models differ (a row of ties has no best)
        best = (min if metric in LOWER_IS_BETTER else max)(known) if len(set(known)) > 1 else None
        cells = "".join(f'<td class="{"best" if v is not None and v == best else ""}">'
                        f'{"—" if v is None else f"{v:.4g}"}{_interval(ci.get(m, {}).get(key))}</td>'
                        for m, v in zip(models, values, strict=True))
        rows.append(f"<tr><td>{html.escape(metric)}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _interval(interval) -> str:
    return "" if interval is None else f"<br><small>[{interval[0]:.3g}, {interval[1]:.3g}]</small>"


def write_report(output_dir: Path, spec: EvalSpec, table: dict, timings: dict, sources: dict,
                 devices: dict | None = None, ci: dict | None = None) -> Path:
    """Write ``report.html`` and return its path."""
    from shipyard.eval.result import STAGE_ROWS, STAGE_TITLES

    models = [m for m in table if m not in STAGE_ROWS]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Shipyard eval report</title>"
             f"<style>{_CSS}</style></head><body><h1>Shipyard eval report</h1>",
             f"<p class='meta'>{when} · models: {html.escape(', '.join(models))} · suites: "
             f"{html.escape(', '.join(s.name for s in spec.suites))}"
             + (f" · win rate against <b>{html.escape(spec.baseline)}</b>" if spec.baseline else "")
             + "".join(f" · {html.escape(k)} is made from {html.escape(v)}" for k, v in sources.items()) + "</p>",
             "<p class='note'>ROUGE, BLEU, chrF and exact match measure surface overlap with one reference "
             "answer. They are diagnostics: read them next to perplexity, reward, toxicity and benchmark "
             "accuracy, never alone. The best value of a row is shaded where models differ. Under a value: its 95% CI "
             "(percentile bootstrap over the suite's rows); compare two models by the gate's paired intervals, "
             "not by whether these overlap.</p>"]
    for suite in spec.suites:
        keys = [k for k in dict.fromkeys(k for m in models for k in table[m]) if k.startswith(suite.name + ".")]
        if not keys:
            continue
        data = html.escape(Path(suite.data).name)
        parts.append(f"<h2>{html.escape(suite.name)} <span class='meta'>({suite.kind}, {data})</span></h2>")
        if OVERLAP & {k.split('.', 1)[1] for k in keys}:
            parts.append("<p class='meta'>Overlap metrics: diagnostic only.</p>")
        parts.append(_metric_table(models, keys, table, ci or {}))
        parts.append(_chart(models, keys, table))
    for row, title in STAGE_TITLES.items():  # what the stages measured themselves
        if row in table:
            parts.append(f"<h2>{html.escape(title)}</h2><table><tr><th>metric</th><th>value</th></tr>")
            parts += [f"<tr><td>{html.escape(k)}</td><td>{v:.4g}{_interval((ci or {}).get(row, {}).get(k))}</td></tr>"
                      for k, v in table[row].items()]
            parts.append("</table>")
    parts.append("<h2>Throughput <span class='meta'>(examples/s per suite, this machine)</span></h2>")
    parts.append("<table><tr><th>suite</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in timings) + "</tr>")
    for suite in spec.suites:
        parts.append(f"<tr><td>{html.escape(suite.name)}</td>"
                     + "".join(f"<td>{timings[m].get(suite.name, float('nan')):.3g}</td>" for m in timings) + "</tr>")
    if devices:
        parts.append("<tr><td><i>device</i></td>"
                     + "".join(f"<td>{html.escape(devices.get(m, '?'))}</td>" for m in timings) + "</tr>")
    parts.append("</table>")
    samples_file = output_dir / "samples.jsonl"
    if samples_file.exists():
        parts.append("<h2>Samples</h2>")
        for line in samples_file.read_text(encoding="utf-8").splitlines()[:60]:
            s = json.loads(line)
            ref = f"<pre>reference: {html.escape(s['reference'])}</pre>" if s.get("reference") else ""
            parts.append(f"<p class='meta'>{html.escape(s['model'])} · {html.escape(s['suite'])}</p>"
                         f"<pre>{html.escape(s['prompt'][-400:])}</pre>{ref}"
                         f"<pre>answer: {html.escape(s['answer'])}</pre>")
    parts.append("</body></html>")
    path = output_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
