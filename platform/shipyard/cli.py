"""The ``shipyard`` command. Heavy libraries load inside each command, so ``--help`` stays fast.

    shipyard run pipelines/lifecycle.py -c pipelines/configs/tiny-cpu.yaml
    shipyard serve models:/shipyard-tiny@champion
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from shipyard.schema import ConfigError
from shipyard.serving.options import DEFAULTS as SERVE

# A preempted run (SIGTERM: the pod is being evicted) exits with EX_TEMPFAIL: try again, it resumes.
EXIT_PREEMPTED = 75
# What a command reports as one red line and exit status 2: bad config, input or state, never a traceback.
USER_ERRORS = (ConfigError, FileNotFoundError, ValueError, LookupError, ConnectionError, RuntimeError, OSError)


class ShipyardGroup(TyperGroup):
    """Every command's errors go through one handler (``cli_errors``), however deep the sub-command."""

    def invoke(self, ctx):
        with cli_errors():
            return super().invoke(ctx)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Errors a user can fix become one line on stderr and exit 2; a preemption says how to resume, exit 75."""
    from pydantic import ValidationError

    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise  # click's own exits (--help, bad usage, _fail) are RuntimeErrors: they are not ours to report
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()))
    except KeyError as exc:
        _fail(str(exc.args[0] if exc.args else exc))
    except USER_ERRORS as exc:
        from shipyard.train.loop import Preempted  # here, not at the top: only a failed command pays for it

        if isinstance(exc, Preempted):
            typer.secho(f"preempted: {exc}. Run the same command again (same --checkpoint-dir) to resume.",
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(EXIT_PREEMPTED) from None
        _fail(str(exc))


app = typer.Typer(cls=ShipyardGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Shipyard: the generative-AI lifecycle as Kubeflow Pipelines, tracked in MLflow, "
                       "served on KServe.")
models_app = typer.Typer(no_args_is_help=True, help="The MLflow model registry: list, promote, roll back.")
config_app = typer.Typer(no_args_is_help=True, help="Pipeline profiles.")
adapters_app = typer.Typer(no_args_is_help=True, help="PEFT adapters of a finetune output: list, merge.")
rag_app = typer.Typer(no_args_is_help=True, help="RAG indexes in Feast: ingest documents, list versions, query, "
                                                 "pin to a model version.")
app.add_typer(models_app, name="models")
app.add_typer(rag_app, name="rag")
app.add_typer(config_app, name="config")
prompts_app = typer.Typer(no_args_is_help=True, help="Versioned prompts in MLflow's prompt registry: register, "
                                                     "show, render.")
app.add_typer(adapters_app, name="adapters")
app.add_typer(prompts_app, name="prompts")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Pipeline profile YAML.")]
RepoOpt = Annotated[str | None, typer.Option(
    "--feast-repo", help="Feast repo [default: $SHIPYARD_FEAST_REPO or .shipyard/feast].")]
TrackingOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite under .shipyard/].")]


def _tracking(uri: str | None) -> str:
    from shipyard.paths import default_tracking_uri

    return uri or default_tracking_uri()


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def run(pipeline: Annotated[str, typer.Argument(help="Pipeline file, e.g. pipelines/lifecycle.py.")],
        config: ConfigOpt, tracking_uri: TrackingOpt = None) -> None:
    """Run a pipeline locally on kfp.local (no cluster), tracked in MLflow."""
    from shipyard.pipeline_runs import format_summary, run_local

    typer.echo(format_summary(run_local(pipeline, str(config), _tracking(tracking_uri))))


@app.command("compile")
def compile_(pipeline: Annotated[str, typer.Argument(help="Pipeline file.")],
             output: Annotated[Path, typer.Option("--output", "-o", help="IR YAML to write.")] = Path(
                 "pipeline.yaml"),
             config: Annotated[Path | None, typer.Option(
                 "--config", "-c", help="Profile whose cluster: section places the tasks (GPU pools, "
                                        "Secrets, pipeline root); none compiles the plain DAG.")] = None) -> None:
    """Compile a pipeline to KFP IR YAML for a cluster."""
    from shipyard.pipeline_runs import compile_pipeline

    typer.echo(f"wrote {compile_pipeline(pipeline, output, str(config) if config else None)}")


HostOpt = Annotated[str, typer.Option(help="KFP API URL (e.g. http://127.0.0.1:8080 after port-forwarding "
                                           "ml-pipeline-ui).")]
NamespaceOpt = Annotated[str | None, typer.Option(help="Kubernetes namespace (multi-user KFP: your profile's).")]


@app.command()
def submit(pipeline: Annotated[str, typer.Argument(help="Pipeline file.")], config: ConfigOpt, host: HostOpt,
           tracking_uri: Annotated[str, typer.Option(
               "--tracking-uri", help="MLflow server reachable from the cluster's pods.")],
           experiment: Annotated[str | None, typer.Option(help="KFP experiment (default: the profile's).")] = None,
           run_name: Annotated[str | None, typer.Option(help="KFP run name (default: PIPELINE-PROFILE).")] = None,
           service_account: Annotated[str | None, typer.Option(
               help="ServiceAccount of the run's pods (default: the profile's cluster.service_account).")] = None,
           namespace: NamespaceOpt = None,
           param: Annotated[list[str] | None, typer.Option(
               help="A pipeline parameter KEY=VALUE (repeatable), e.g. model_uri=models:/NAME@champion.")] = None
           ) -> None:
    """Submit a pipeline run to Kubeflow Pipelines on a cluster (placed per the profile's cluster: section)."""
    from shipyard.pipeline_runs import submit as submit_run

    params = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--param {item!r}: expected KEY=VALUE")
        params[key] = value
    run_id = submit_run(pipeline, str(config), host, tracking_uri, experiment, service_account, run_name,
                        namespace, params)
    typer.echo(f"submitted KFP run {run_id}")


@app.command()
def status(run_id: Annotated[str, typer.Argument(help="KFP run id (printed by submit).")], host: HostOpt,
           namespace: NamespaceOpt = None) -> None:
    """Show a KFP run's state and its tasks' states."""
    from shipyard.pipeline_runs import run_status

    info = run_status(run_id, host, namespace)
    typer.echo(f"{info['run_id']}  {info['name']}  {info['state']}  (created {info['created_at']}, "
               f"finished {info['finished_at']})")
    if info["error"]:
        typer.echo(f"error: {info['error']}")
    for task, state in sorted(info["tasks"].items()):
        typer.echo(f"  {task:<28} {state}")


@app.command()
def deploy(model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
           config: ConfigOpt, tracking_uri: TrackingOpt = None,
           namespace: Annotated[str | None, typer.Option(
               help="Namespace of the InferenceService (default: cluster.deploy.namespace, else the "
                    "kubeconfig context's).")] = None) -> None:
    """Serve a registered model on KServe (the profile's cluster.deploy); rolls back if it never gets Ready."""
    from shipyard.config import load_pipeline_config
    from shipyard.kube.deploy import deploy as deploy_model

    cluster = load_pipeline_config(str(config), resolve_paths=False).cluster
    if namespace:
        cluster = cluster.model_copy(update={"deploy": cluster.deploy.model_copy(update={"namespace": namespace})})
    d = deploy_model(model_uri, cluster, _tracking(tracking_uri), log=typer.echo)
    typer.echo(f"serving {d.model} v{d.version} at {d.url}")


def _serve_opt(field: str, *flags: str):
    """A ``shipyard serve`` option with the default and help of ServeOptions' field (shared with the container)."""
    from shipyard.serving.options import HELP

    return typer.Option(*flags, help=HELP[field])


@app.command()
def serve(model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or a model dir.")],
          host: Annotated[str, _serve_opt("host")] = SERVE.host,
          port: Annotated[int, _serve_opt("port")] = SERVE.port,
          name: Annotated[str | None, _serve_opt("name")] = SERVE.name,
          max_new_tokens: Annotated[int, _serve_opt("max_new_tokens")] = SERVE.max_new_tokens,
          max_batch_size: Annotated[int, _serve_opt("max_batch_size")] = SERVE.max_batch_size,
          max_queue: Annotated[int, _serve_opt("max_queue")] = SERVE.max_queue,
          request_timeout_s: Annotated[float, _serve_opt("request_timeout_s")] = SERVE.request_timeout_s,
          max_body_kb: Annotated[int, _serve_opt("max_body_kb")] = SERVE.max_body_kb,
          adapter: Annotated[list[str] | None, _serve_opt("adapter")] = None,
          engine: Annotated[str, _serve_opt("engine")] = SERVE.engine,
          device: Annotated[str, _serve_opt("device")] = SERVE.device,
          dtype: Annotated[str, _serve_opt("dtype")] = SERVE.dtype,
          rag_index: Annotated[str | None, typer.Option(
              help="RAG index NAME or NAME@VERSION: start the sidecar and answer with citations "
                   "(default: the index version the model version is pinned to, if any).")] = None,
          no_rag: Annotated[bool, typer.Option("--no-rag",
                                               help="Serve without RAG even if the model pins an index.")] = False,
          rag_port: Annotated[int | None, typer.Option(help="Sidecar port (default: PORT+1).")] = None,
          rag_top_k: Annotated[int, _serve_opt("rag_top_k")] = SERVE.rag_top_k,
          rag_timeout_s: Annotated[float, _serve_opt("rag_timeout_s")] = SERVE.rag_timeout_s,
          rag_context_tokens: Annotated[int, _serve_opt("rag_context_tokens")] = SERVE.rag_context_tokens,
          app_prompt: Annotated[str | None, _serve_opt("app_prompt")] = SERVE.app_prompt,
          app_examples: Annotated[str | None, _serve_opt("app_examples")] = SERVE.app_examples,
          memory_turns: Annotated[int, _serve_opt("memory_turns")] = SERVE.memory_turns,
          memory_conversations: Annotated[int, _serve_opt("memory_conversations")] = SERVE.memory_conversations,
          guardrails: Annotated[str | None, _serve_opt("guardrails")] = SERVE.guardrails,
          feast_repo: RepoOpt = None,
          tracking_uri: TrackingOpt = None) -> None:
    """Serve a model with KServe's ModelServer and an OpenAI-compatible API (/openai/v1), with a RAG sidecar."""
    from shipyard.serving.local import serve_local
    from shipyard.serving.options import ServeOptions

    opts = ServeOptions(host=host, port=port, name=name, max_new_tokens=max_new_tokens, max_batch_size=max_batch_size,
                        max_queue=max_queue, request_timeout_s=request_timeout_s, max_body_kb=max_body_kb,
                        adapter=tuple(adapter or ()), engine=engine, device=device, dtype=dtype, rag_top_k=rag_top_k,
                        rag_timeout_s=rag_timeout_s, rag_context_tokens=rag_context_tokens, app_prompt=app_prompt,
                        app_examples=app_examples, memory_turns=memory_turns,
                        memory_conversations=memory_conversations, guardrails=guardrails)
    serve_local(model_uri, opts, rag_index=rag_index, no_rag=no_rag, rag_port=rag_port, feast_repo=feast_repo,
                tracking_uri=_tracking(tracking_uri))


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
       tracking_uri: TrackingOpt = None) -> None:
    """Open the MLflow UI on the local tracking store (http://127.0.0.1:PORT)."""
    from shipyard.tracking.runs import artifact_root_for

    uri = _tracking(tracking_uri)
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", "127.0.0.1", "--port", str(port)]
    root = artifact_root_for(uri)
    if root:
        args += ["--default-artifact-root", root]
    typer.echo(f"MLflow UI at http://127.0.0.1:{port} (store {uri}); Ctrl-C stops it")
    os.execv(sys.executable, args)


@app.command()
def demo(config: ConfigOpt = Path("pipelines/configs/smollm2-cpu.yaml"),
         port: Annotated[int, typer.Option(help="Port for the demo server.")] = 8080,
         tracking_uri: TrackingOpt = None) -> None:
    """Run the lifecycle pipeline, serve the champion, and chat with it once (``make demo``)."""
    from shipyard.demo import run_demo

    run_demo(str(config), port=port, tracking_uri=_tracking(tracking_uri))


@models_app.command("list")
def models_list(tracking_uri: TrackingOpt = None) -> None:
    """Registered models, their versions, aliases and gate results."""
    from shipyard.tracking.runs import client

    c = client(_tracking(tracking_uri))
    for model in c.search_registered_models():
        typer.echo(f"{model.name}")
        for mv in sorted(c.search_model_versions(f"name='{model.name}'"), key=lambda m: int(m.version)):
            tags = [a for a, v in (model.aliases or {}).items() if str(v) == str(mv.version)]
            typer.echo(f"  v{mv.version}  gate={mv.tags.get('shipyard.gate', '?'):7s} "
                       f"aliases={','.join(tags) or '-'}  run={mv.run_id}")


@models_app.command("promote")
def models_promote(name: str, version: str, tracking_uri: TrackingOpt = None) -> None:
    """Point the champion alias at VERSION (the replaced champion is kept for rollback)."""
    from shipyard.tracking.registry import promote

    previous = promote(_tracking(tracking_uri), name, version)
    typer.echo(f"{name}@champion -> v{version} (was {previous or 'none'})")


@models_app.command("rollback")
def models_rollback(name: str, tracking_uri: TrackingOpt = None,
                    from_version: Annotated[str | None, typer.Option(
                        "--from", help="Only roll back if VERSION is the champion; a repeat is a no-op.")] = None
                    ) -> None:
    """Move the champion alias back to the version the current champion replaced."""
    from shipyard.tracking.registry import rollback

    typer.echo(f"{name}@champion -> v{rollback(_tracking(tracking_uri), name, from_version)}")


@prompts_app.command("register")
def prompts_register(spec: Annotated[Path, typer.Argument(help="Prompt YAML: name, system, template, examples.")],
                     alias: Annotated[str | None, typer.Option(help="Move this alias to the new version.")] = None,
                     message: Annotated[str, typer.Option(help="Commit message of the version.")] = "",
                     tracking_uri: TrackingOpt = None) -> None:
    """Register SPEC as the next version of its prompt."""
    from shipyard.apps.prompts import read_spec, register

    p = register(_tracking(tracking_uri), read_spec(spec), alias, message)
    typer.echo(f"{p.uri}" + (f" (@{alias})" if alias else ""))


@prompts_app.command("show")
def prompts_show(ref: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME/VERSION.")],
                 tracking_uri: TrackingOpt = None) -> None:
    """The prompt REF names, as YAML, with its version and aliases."""
    import yaml

    from shipyard.apps.prompts import load

    p = load(_tracking(tracking_uri), ref)
    typer.echo(f"# {p.uri}" + (f" @{', @'.join(p.aliases)}" if p.aliases else ""))
    typer.echo(yaml.safe_dump(p.spec.model_dump(exclude_defaults=True), sort_keys=False, allow_unicode=True), nl=False)


@prompts_app.command("render")
def prompts_render(ref: Annotated[str, typer.Argument(help="NAME, NAME@ALIAS or NAME/VERSION.")],
                   var: Annotated[list[str], typer.Option("--var", help="VARIABLE=VALUE, once per variable.")],
                   shots: Annotated[int | None, typer.Option(help="Use the first K examples [default: all].")] = None,
                   tracking_uri: TrackingOpt = None) -> None:
    """The chat turns REF gives for these values, as JSON."""
    import json

    from shipyard.apps.prompts import load

    bad = [v for v in var if "=" not in v]
    if bad:
        _fail(f"--var takes VARIABLE=VALUE, got {bad[0]!r}")
    values = dict(v.split("=", 1) for v in var)
    typer.echo(json.dumps(load(_tracking(tracking_uri), ref).spec.messages(shots, **values), indent=2))


@app.command()
def lineage(model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION.")],
            tracking_uri: TrackingOpt = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False) -> None:
    """The chain behind a registered model: gate, eval report, stage runs and their inputs, raw data."""
    import json

    from shipyard.tracking.lineage import format_lineage
    from shipyard.tracking.lineage import lineage as get_lineage

    info = get_lineage(_tracking(tracking_uri), model_uri)
    typer.echo(json.dumps(info, indent=2) if as_json else format_lineage(info), nl=as_json)


@app.command("eval")
def eval_(
    spec: Annotated[Path, typer.Argument(
        help="Eval spec YAML: a profile (its evaluate: section) or the section alone.")],
    model: Annotated[list[str], typer.Option(help="NAME=DIR (or NAME=models:/...); repeat for several models.")],
    output: Annotated[Path, typer.Option(help="Folder for eval.json, eval.md, report.html, samples.jsonl.")],
    reward_model: Annotated[str | None, typer.Option(help="Reward model folder (reward suites need one).")] = None,
    suite: Annotated[list[str] | None, typer.Option(help="Run only this suite; repeat for several.")] = None,
    device: Annotated[str | None, typer.Option(
        help="auto, cpu or cuda: overrides the spec's device (auto: a GPU when one is visible).")] = None,
    rag_index: Annotated[str | None, typer.Option(
        help="NAME or NAME@VERSION: the RAG index the spec's rag suites (and app suites' ReAct search) read.")] = None,
    feast_repo: RepoOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Run an eval spec on models outside a pipeline: the same suites and code as the evaluate stage."""
    from shipyard.eval.evaluate import format_table, run_evaluate
    from shipyard.eval.evaluate_config import load_eval_spec
    from shipyard.stages import quiet_libraries
    from shipyard.tracking.registry import resolve_model_dir

    quiet_libraries()
    cfg = load_eval_spec(spec)
    if suite:
        cfg = cfg.only(suite)
    if device:
        cfg = type(cfg).model_validate({**cfg.model_dump(), "device": device})
    models = {}
    for item in model:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise ValueError(f"--model {item!r}: expected NAME=DIR")
        models[name] = str(resolve_model_dir(_tracking(tracking_uri), where))
    if rag_index and not feast_repo:
        from shipyard.features.store import repo_for

        feast_repo = str(repo_for(_tracking(tracking_uri)))
    table = run_evaluate(cfg, models, output, reward_model_dir=reward_model, rag_index=rag_index,
                         feast_repo=feast_repo, tracking_uri=_tracking(tracking_uri))
    typer.echo(format_table(table) + f"\nreport: {output / 'report.html'}")


@app.command("filter")
def filter_(
    input: Annotated[Path, typer.Argument(help="A folder (or file) of raw shards: *.jsonl[.gz], *.txt[.gz].")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where corpus.jsonl, stats.json, drop_table.md and "
                                                                "quarantine/ go.")],
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML with a `data_filter:` section (a profile will do); input is replaced.")] = None,
    steps: Annotated[str | None, typer.Option(help="Comma-separated steps to run instead of the config's, e.g. "
                                                   "normalize,pii,length,exact_dedup.")] = None,
) -> None:
    """Curate shards outside a pipeline: the data_filter stage function, a progress bar, the drop table."""
    from shipyard.console import TaskProgress
    from shipyard.data.data_filter import run_data_filter
    from shipyard.data.data_filter_config import DataFilterConfig
    from shipyard.schema import load_section

    base = load_section(config, "data_filter", DataFilterConfig).model_dump() if config else {}
    chosen = {"steps": [s.strip() for s in steps.split(",") if s.strip()]} if steps is not None else {}
    cfg = DataFilterConfig(**{**base, "input": str(input), **chosen})
    work = output / "_work"
    with TaskProgress(work, file=sys.stderr):
        res = run_data_filter(cfg, output, output / "quarantine", work_dir=work)
    typer.echo(res.table())
    typer.echo(f"kept {res.kept} of {res.read} rows ({sum(res.dropped.values())} dropped, {res.quarantined} "
               f"quarantined) in {res.seconds:.1f} s -> {output / 'corpus.jsonl'}; rejected rows with file, line "
               f"and reason in {output / 'quarantine'}")


@app.command("train-tokenizer")
def train_tokenizer(
    corpus: Annotated[Path, typer.Argument(help="A clean corpus folder (corpus.jsonl), e.g. `shipyard filter`'s.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the tokenizer is saved.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML with a `train_tokenizer:` section (a "
                                                                       "profile will do).")] = None,
) -> None:
    """Train a tokenizer outside a pipeline: the train_tokenizer stage function and its held-out stats."""
    from shipyard.data.train_tokenizer import run_train_tokenizer
    from shipyard.data.train_tokenizer_config import TokenizerConfig
    from shipyard.schema import load_section

    cfg = load_section(config, "train_tokenizer", TokenizerConfig) if config else TokenizerConfig()
    stats = run_train_tokenizer(cfg, corpus, output)
    typer.echo(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
               + f" -> {output}")


@app.command()
def pretrain(
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="YAML with a `pretrain:` section (a profile will do).")],
    corpus: Annotated[Path, typer.Option(help="Clean corpus folder (corpus.jsonl), e.g. a data_filter output.")],
    tokenizer: Annotated[Path, typer.Option(help="Tokenizer folder from train_tokenizer.")],
    output: Annotated[Path, typer.Option(help="Where the model and tokenizer are saved.")],
    checkpoint_dir: Annotated[str | None, typer.Option(
        help="Checkpoints (a folder or s3://bucket/prefix); rerun with the same one to resume.")] = None,
) -> None:
    """Pretrain one model outside a pipeline: any objective (clm, mlm, span), same stage function."""
    from shipyard.schema import load_section
    from shipyard.train.pretrain import run_pretrain
    from shipyard.train.pretrain_config import PretrainConfig

    cfg = load_section(config, "pretrain", PretrainConfig)
    metrics = run_pretrain(cfg, corpus, tokenizer, output, checkpoint_dir=checkpoint_dir,
                           log=lambda m, step: typer.echo(f"step {step}: " + ", ".join(
                               f"{k} {v:.4g}" for k, v in m.items())))
    typer.echo(f"saved {cfg.objective}/{cfg.architecture} model to {output}: val_loss "
               f"{metrics['val_loss_initial'] if 'val_loss_initial' in metrics else float('nan'):.3f} -> "
               f"{metrics['val_loss']:.3f}, {metrics['train_tokens']:.0f} tokens, "
               f"{metrics['train_pf_days']:.2e} PF-days")


@app.command("critique-revise")
def critique_revise(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML with a `critique_revise:` section.")],
    model: Annotated[Path, typer.Option(help="The instruct model folder (a finetune output).")],
    output: Annotated[Path, typer.Option(help="Folder for sft.jsonl, preferences.jsonl, trace.jsonl.")],
) -> None:
    """Constitutional critique-revise: AI-revised answers as SFT data and AI preference pairs."""
    from shipyard.schema import load_section
    from shipyard.train.critique_revise import run_critique_revise
    from shipyard.train.critique_revise_config import CritiqueReviseConfig

    cfg = load_section(config, "critique_revise", CritiqueReviseConfig)
    metrics = run_critique_revise(cfg, model, output)
    typer.echo(f"{metrics['prompts']} prompts, {cfg.rounds} round(s): {metrics['sft_rows']} SFT rows and "
               f"{metrics['preference_pairs']} preference pairs in {output}")


@app.command()
def optimize(
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="YAML with an `optimize:` section (a profile will do).")],
    model: Annotated[Path, typer.Option(help="The model folder to optimize (an align or finetune output).")],
    output: Annotated[Path, typer.Option(help="Where the optimized model and optimize.json go.")],
    corpus: Annotated[Path | None,
                      typer.Option(help="Corpus folder (corpus.jsonl) for distillation and pruning recovery.")] = None,
    heldout: Annotated[Path | None, typer.Option(help="JSONL of {text} for each step's perplexity.")] = None,
) -> None:
    """Distill, prune and/or quantize one model outside a pipeline; same stage function and report."""
    from shipyard.optimize.optimize import REPORT_FILE, format_report, run_optimize
    from shipyard.optimize.optimize_config import OptimizeConfig
    from shipyard.schema import load_section
    from shipyard.stages import quiet_libraries

    quiet_libraries()
    cfg = load_section(config, "optimize", OptimizeConfig)
    run_optimize(cfg, model, output, corpus_dir=corpus, heldout=heldout)
    import json

    typer.echo(format_report(json.loads((output / REPORT_FILE).read_text())["steps"]) + f"saved to {output}")


@adapters_app.command("list")
def adapters_list(model_dir: Annotated[Path, typer.Argument(help="A finetune output directory.")]) -> None:
    """The adapters a fine-tuned model directory holds (one per task, or one for the mixture)."""
    from shipyard.models.adapters import adapters_in

    found = adapters_in(model_dir)
    if not found:
        _fail(f"{model_dir}: no adapters/ with adapter_config.json")
    for name, path in found.items():
        typer.echo(f"{name}\t{path}")


@adapters_app.command("merge")
def adapters_merge(base: Annotated[Path, typer.Argument(help="The base model directory.")],
                   adapter: Annotated[Path, typer.Argument(help="An adapter directory (adapters/<name>).")],
                   output: Annotated[Path, typer.Argument(help="Where the merged model goes.")]) -> None:
    """Fold a LoRA adapter into its base: a plain safetensors model with no adapter at run time."""
    import shutil

    from shipyard.models.adapters import merge_adapter

    merge_adapter(base, adapter, output)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (base / name).exists():
            shutil.copy(base / name, output / name)
    typer.echo(f"merged {adapter} into {base} -> {output}")


@rag_app.command("ingest")
def rag_ingest(path: Annotated[Path, typer.Argument(help="JSONL ({text, id?, source?, tenant?}) or a folder of "
                                                        ".txt/.md/.rst/.jsonl files.")],
               index: Annotated[str, typer.Option(help="Index name; each ingest adds a version.")],
               tenant: Annotated[str, typer.Option(help="Tenant of rows that name none.")] = "public",
               chunk_tokens: Annotated[int, typer.Option(help="Chunk size in embedding-model tokens.")] = 200,
               overlap_tokens: Annotated[int, typer.Option(help="Tokens shared by neighbouring chunks.")] = 40,
               feast_repo: RepoOpt = None) -> None:
    """Chunk, embed (all-MiniLM-L6-v2) and write documents to Feast as a new index version."""
    from shipyard.features.rag_index import run_ingest
    from shipyard.features.rag_index_config import RagIndexConfig

    cfg = RagIndexConfig(index=index, tenant=tenant, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
    result = run_ingest(cfg, path, feast_repo, log=typer.echo)
    typer.echo(f"{result.ref}: {result.documents} documents, {result.chunks} chunks, tenants {result.tenants}, "
               f"{result.quarantined} quarantined, {result.seconds:.1f} s")


@rag_app.command("list")
def rag_list(feast_repo: RepoOpt = None) -> None:
    """Index versions in the Feast repo."""
    from shipyard.features.store import INDEX_TAG, VERSION_TAG, open_store

    store = open_store(feast_repo)
    for fv in sorted(store.list_feature_views(allow_cache=False), key=lambda v: v.name):
        if INDEX_TAG in fv.tags:
            typer.echo(f"{fv.tags[INDEX_TAG]}@{fv.tags[VERSION_TAG]}\tview {fv.name}\t"
                       f"{fv.tags.get('shipyard.documents', '')}")


@rag_app.command("query")
def rag_query(index: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")],
              query: Annotated[str, typer.Argument(help="The question.")],
              tenant: Annotated[str, typer.Option(help="Whose chunks to search.")] = "public",
              top_k: Annotated[int, typer.Option(help="Chunks to return.")] = 4,
              feast_repo: RepoOpt = None) -> None:
    """Retrieve from an index in-process, as the sidecar would (no server)."""
    from shipyard.features.retrieve import UnknownTenant, load_index

    retriever, embedder, info = load_index(index, feast_repo)
    if tenant not in info["tenants"]:
        raise UnknownTenant(f"{index}: no chunks of tenant {tenant!r} (tenants: {sorted(info['tenants'])})")
    hits = retriever.search(embedder.embed([query])[0], tenant, top_k)
    for h in hits:
        typer.echo(f"{h.score:.3f}  {h.chunk_id}\n       {h.text[:160]!r}")


@rag_app.command("pin")
def rag_pin(model_uri: Annotated[str, typer.Argument(help="models:/NAME/VERSION or models:/NAME@ALIAS.")],
            index: Annotated[str, typer.Argument(help="NAME@VERSION (NAME alone: its latest version).")],
            feast_repo: RepoOpt = None, tracking_uri: TrackingOpt = None) -> None:
    """Pin an index version to a registered model version (what `shipyard serve` then serves with it)."""
    from shipyard.features.store import open_store, resolve
    from shipyard.tracking.registry import model_version, pin_rag_index

    name, version, _ = resolve(open_store(feast_repo), index)
    found = model_version(_tracking(tracking_uri), model_uri)
    if found is None:
        raise ValueError(f"{model_uri}: pin needs a registered model (models:/NAME/VERSION or models:/NAME@ALIAS)")
    pin_rag_index(_tracking(tracking_uri), *found, f"{name}@{version}")
    typer.echo(f"{found[0]} version {found[1]} pinned to RAG index {name}@{version}")


@config_app.command("validate")
def config_validate(paths: Annotated[list[Path], typer.Argument(help="Profile YAML files.")]) -> None:
    """Validate pipeline profiles: unknown keys, types, impossible values, missing data paths."""
    from shipyard.config import load_pipeline_config

    failed = False
    for path in paths:
        try:
            cfg = load_pipeline_config(path)
            typer.echo(f"ok  {path} (profile {cfg.name}, sha256 {cfg.digest()[:12]})")
        except ConfigError as exc:
            failed = True
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
    if failed:
        raise typer.Exit(2)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
