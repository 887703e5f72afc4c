"""Guards on the package layout and the CLI's start-up cost."""

import subprocess
import sys
import time

from conftest import REPO


def test_platform_is_the_stdlib_module():
    import platform

    assert not (REPO / "platform" / "__init__.py").exists()
    assert "site-packages" not in platform.__file__ and "lib/python" in platform.__file__
    assert callable(platform.system)


def test_one_import_root_maps_the_top_level_folders():
    import shipyard.components.images
    import shipyard.pipelines.lifecycle

    assert shipyard.components.images.__file__.startswith(str(REPO / "components"))
    assert shipyard.pipelines.lifecycle.__file__.startswith(str(REPO / "pipelines"))


def test_cli_help_is_fast_and_lists_every_command():
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "shipyard.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert time.perf_counter() - t0 < 3.0  # generous for a loaded CI box; ~0.5 s here
    import re

    import typer

    from shipyard.cli import app

    registered = set(typer.main.get_command(app).commands)
    listed = set(re.findall(r"^│ ([a-z][a-z-]*) {2,}\S", out, flags=re.M))  # the first column of the Commands box
    assert listed == registered, (listed ^ registered)
    assert {"run", "compile", "submit", "status", "deploy", "serve", "ui", "demo", "eval", "lineage", "pretrain",
            "optimize", "critique-revise", "models", "rag", "config", "adapters", "filter",
            "train-tokenizer", "prompts"} == registered
    heavy = subprocess.run([sys.executable, "-c", "import shipyard.cli, sys; "
                            "print(sorted(m for m in ('torch','transformers','mlflow','kfp') if m in sys.modules))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert heavy == "[]"
