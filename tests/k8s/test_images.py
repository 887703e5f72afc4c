"""The images can't be built here (no docker engine): check what can be checked without one."""

import re
import subprocess
import sys

import pytest

from conftest import REPO
from kube_checks import CHART, kustomize, render

pytestmark = pytest.mark.k8s
IMAGES = REPO / "components" / "images"


def _stages(dockerfile: str) -> list[str]:
    return re.split(r"^FROM ", dockerfile, flags=re.M)[1:]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_is_multistage_pinned_and_non_root(name):
    text = (IMAGES / name).read_text()
    stages = _stages(text)
    assert len(stages) == 2, "build stage + final stage"
    for arg in re.findall(r"^ARG \w+=(\S+)", text, flags=re.M):
        assert re.search(r":\d", arg) and "latest" not in arg, f"{name}: base image {arg} is not pinned"
    final = stages[-1]
    assert "build-essential" not in final and "-devel" not in final.split("\n")[0], "build tools in the final stage"
    assert re.search(r"^USER 10001:10001$", final, flags=re.M), "the chart runs uid 10001"
    # every package from the image's lock, as is (--no-deps: nothing resolved at build time), hashes checked
    lock = "cuda.lock" if name.endswith(".cuda") else "cpu.lock"
    assert re.search(rf"pip install [^\n]*--no-deps --require-hashes[^&]*-r requirements/{lock}", text), name
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in text and "pip check" in text
    assert [p for p in re.findall(r"(\S+==\S+)", text)] == ["pip==25.3"], f"{name}: a pin outside the lock"
    if name == "Dockerfile":  # the llama.cpp engine's libllama, built in the build stage, portable
        assert "scripts/build_llama.py /opt/shipyard --portable" in stages[0] and "build_llama" not in final


def test_one_tag_everywhere():
    import shipyard.images
    from shipyard import __version__
    from shipyard.components.images import SHIPYARD_GPU_IMAGE, SHIPYARD_IMAGE

    assert (SHIPYARD_IMAGE, SHIPYARD_GPU_IMAGE) == (shipyard.images.SHIPYARD_IMAGE, shipyard.images.SHIPYARD_GPU_IMAGE)

    chart = (CHART / "Chart.yaml").read_text()
    assert f'appVersion: "{__version__}"' in chart
    assert SHIPYARD_IMAGE.endswith(f"/shipyard:{__version__}")
    assert SHIPYARD_GPU_IMAGE.endswith(f"/shipyard-cuda:{__version__}")


def _entrypoints() -> set[tuple[str, ...]]:
    """The commands the chart's and the manifests' containers run (Shipyard image only)."""
    objs = render("gpu-values.yaml") + kustomize("gpu")
    cmds = set()
    for o in objs:
        spec = o.get("spec", {})
        containers = (spec.get("template", {}).get("spec", {}).get("containers", []) + spec.get("containers", [])
                      + spec.get("predictor", {}).get("containers", []))
        for c in containers:
            if "shipyard" in c.get("image", "") and c.get("command"):
                cmd = c["command"]
                cmds.add(tuple(cmd[:3]) if cmd[:2] == ["python", "-m"] else tuple(cmd[:2]))
        if o["kind"] == "TrainJob":
            cmds.add(tuple(o["spec"]["trainer"]["command"]))
    return cmds


def test_every_entrypoint_the_cluster_runs_exists_and_starts():
    cmds = _entrypoints()
    assert cmds == {("mlflow", "server"), ("feast", "serve"), ("feast", "serve_registry"),
                    ("python", "-m", "shipyard.serving"), ("python", "-m", "shipyard.serving.rag_sidecar"),
                    ("torchrun", "-m", "shipyard.train.launch", "/workspace/shipyard/example/pretrain/spec.json")}
    bindir = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin").is_dir() else None
    for cmd in sorted(cmds):
        if cmd[0] == "torchrun":  # the launcher module must import; torchrun itself is torch's
            argv = [sys.executable, "-c", "import shipyard.train.launch"]
        elif cmd[0] == "python":
            argv = [sys.executable, *cmd[1:], "--help"]
        else:
            exe = str((bindir / cmd[0]) if bindir else cmd[0])
            argv = [exe, *cmd[1:], "--help"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, f"{' '.join(cmd)}: {out.stderr[-2000:]}"
