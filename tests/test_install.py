"""The install is the lock: what is installed is what was tested, and the wheel carries every package."""

import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata

import pytest

from conftest import REPO

LOCKS = REPO / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==(\S+)", re.M)


def pins(lock: str) -> dict[str, str]:
    return {name.lower(): version for name, version in PIN.findall((LOCKS / lock).read_text())}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_kfp_is_the_locked_version():
    """The golden IR embeds the SDK version: a kfp the lock did not choose changes every golden file."""
    locked, installed = pins("dev.lock")["kfp"], _installed("kfp")
    assert installed == locked, (
        f"kfp {installed} is installed but requirements/dev.lock pins {locked}: install from the lock "
        f"(make install, i.e. pip install --no-deps --require-hashes -r requirements/dev.lock), or take the new "
        f"release on purpose with make lock and regenerate tests/k8s/golden (SHIPYARD_UPDATE_GOLDEN=1)")


def test_every_installed_package_is_the_locked_version():
    wrong = {name: (version, _installed(name)) for name, version in pins("dev.lock").items()
             if _installed(name) != version}
    assert not wrong, "installed != locked (make install installs the lock):\n" + "\n".join(
        f"  {name}: locked {locked}, installed {got}" for name, (locked, got) in sorted(wrong.items()))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_nothing_outside_the_lock_is_installed():
    """A package no lock names (left from an older install, or added by hand) is untested code on the path."""
    locked = {_normal(n) for lock in ("dev.lock", "smollm2.lock") for n in pins(lock)} | {"shipyard", "pip"}
    extra = sorted({_normal(d.metadata["Name"]) for d in metadata.distributions()} - locked)
    assert not extra, f"installed but in no lock: {extra}; rebuild the venv (rm -rf .venv && make install)"


@pytest.mark.parametrize("lock", ["dev.lock", "cpu.lock", "cuda.lock", "smollm2.lock"])
def test_every_pin_carries_its_hashes(lock):
    entries = re.split(r"\n(?=[A-Za-z0-9])", (LOCKS / lock).read_text().strip())
    assert entries and all(PIN.match(e) and "--hash=sha256:" in e for e in entries), lock


def test_the_image_locks_pin_what_the_tests_ran():
    dev, cpu, cuda = pins("dev.lock"), pins("cpu.lock"), pins("cuda.lock")
    assert {k: v for k, v in cpu.items() if dev.get(k) != v} == {}
    # the CUDA image differs only by torch's build and what only it installs (CUDA wheels, bitsandbytes)
    assert {k for k, v in cuda.items() if k in dev and dev[k] != v} == {"torch"}
    assert dev["torch"] == "2.13.0+cpu" and cuda["torch"] == "2.13.0" and "bitsandbytes" in cuda


def test_the_wheel_holds_every_package(tmp_path):
    # built from a copy of the sources: setuptools' build/ in the checkout would keep modules since removed
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("platform", "components", "pipelines"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(src)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("shipyard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    roots = {"platform/shipyard": "shipyard", "components": "shipyard/components", "pipelines": "shipyard/pipelines"}
    expected = {f"{into}/{init.relative_to(REPO / folder).as_posix()}"
                for folder, into in roots.items() for init in (REPO / folder).rglob("*.py")
                if "__pycache__" not in init.parts}
    assert expected - names == set(), f"{wheel.name} lacks {sorted(expected - names)}"
    components = {f"shipyard/components/{c.parent.name}/component.py" for c in REPO.glob("components/*/component.py")}
    assert components <= names and len(components) >= 12
    assert {f"shipyard/pipelines/configs/{p.name}" for p in REPO.glob("pipelines/configs/*.yaml")} <= names
