"""Shared fixtures: tiny data and a tiny pretrained model built once per session (nothing downloaded)."""

from __future__ import annotations

import json
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, *flags: str, name: str | None = None):
    """``python -m shipyard.serving MODEL_DIR --port P FLAGS`` (as its container starts it) until the block
    ends: yields (port, served name, process)."""
    import subprocess
    import sys

    from shipyard.serving.local import stop_server, wait_ready

    port, name = free_port(), name or model_dir.name
    proc = subprocess.Popen([sys.executable, "-m", "shipyard.serving", str(model_dir), "--port", str(port),
                             *(["--name", name] if name != model_dir.name else []), *flags])
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models/{name}", proc, timeout=120)
        yield port, name, proc
    finally:
        stop_server(proc)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Each test keeps its .shipyard state (MLflow store, kfp outputs) in its own temp dir."""
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "shipyard-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    from shipyard.data.data_filter import run_data_filter
    from shipyard.data.data_filter_config import DataFilterConfig

    out = tmp_path_factory.mktemp("corpus")
    steps = ["normalize", "length", "exact_dedup"]
    run_data_filter(DataFilterConfig(input=str(DEMO / "raw"), max_docs=800, steps=steps), out / "clean", out / "q")
    return out / "clean"


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus, tmp_path_factory) -> Path:
    from shipyard.data.train_tokenizer import run_train_tokenizer
    from shipyard.data.train_tokenizer_config import TokenizerConfig

    out = tmp_path_factory.mktemp("tok")
    run_train_tokenizer(TokenizerConfig(vocab_size=600, model_max_length=128), tiny_corpus, out)
    return out


TINY_PRETRAIN = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, context_length=128,
                     batch_size=8, max_steps=30, warmup_steps=3, lr=0.01)


@pytest.fixture(scope="session")
def tiny_base(tiny_corpus, tiny_tokenizer, tmp_path_factory) -> Path:
    from shipyard.train.pretrain import run_pretrain
    from shipyard.train.pretrain_config import PretrainConfig

    out = tmp_path_factory.mktemp("base")
    run_pretrain(PretrainConfig(**TINY_PRETRAIN), tiny_corpus, tiny_tokenizer, out)
    return out


@pytest.fixture(scope="session")
def long_base(tiny_base, tmp_path_factory) -> Path:
    """tiny_base with room for long prompts (a tool preamble, few-shot examples, an agent's scratchpad): 1,024
    positions; RoPE has no learned positions to outgrow. Same name as tiny_base."""
    import json
    import shutil

    model = tmp_path_factory.mktemp("long") / tiny_base.name
    shutil.copytree(tiny_base, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    return model


@pytest.fixture(scope="session")
def tiny_gguf(tiny_base, tmp_path_factory) -> Path:
    """tiny_base with an f32 GGUF export (llama.cpp's converter), under the same name: what the llama.cpp engine
    serves. Skips where libllama is not built."""
    import shutil

    from shipyard.models.llamacpp import available

    if not available():
        pytest.skip("libllama is not built here (make install builds it)")
    from shipyard.models.gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf") / tiny_base.name
    shutil.copytree(tiny_base, out)
    export_gguf(out, ["f32"], serve="f32")
    return out


ENGINES = ("transformers", "llamacpp")


@pytest.fixture(scope="module", params=ENGINES)
def engine_model(request, tiny_base) -> tuple[Path, tuple[str, ...]]:
    """(model dir, flags): the tiny model as each engine serves it; a module using it runs once per engine."""
    model = request.getfixturevalue("tiny_gguf") if request.param == "llamacpp" else tiny_base
    return model, ("--engine", request.param)


def done_collector(count: int):
    """(results, done, sink): ``sink(name)`` is an engine job's sink storing its finished tokens under ``name``;
    ``done`` is set once ``count`` jobs finished."""
    import threading

    results, done = {}, threading.Event()

    def sink(name):
        def put(kind, payload):
            if kind == "done":
                results[name] = payload.tokens
                if len(results) == count:
                    done.set()
        return put

    return results, done, sink


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
