"""The quantized-weights cache: quantize once, load the packed weights on every later start.

It lives beside the vision engines (``engine_dir``) and follows their rules (``backends.cache``):
an artifact is keyed by the checkpoint's content, the precision, the quantized layers' names and
shapes, the torch/torchao versions and the GPU; its bytes are checksummed and written atomically;
anything that does not verify is rebuilt with one log line. The file is safetensors (tensors and
string metadata only), so a tampered cache can make wrong weights but never run code.

Hashing a 16 GB checkpoint takes a while, so its digest is remembered per file (path, size, mtime,
inode) in ``checkpoint-digests.json``: a second start only stats the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path

import torch
from torch import nn

from prune2drive_ros.vlm.backends import cache
from prune2drive_ros.vlm.quantize import (
    Target,
    export_state,
    import_state,
    linear_names,
    quantize_model,
    targets,
    torchao_version,
    uses_torchao,
)

log = logging.getLogger(__name__)

# Bump when the quantization scheme or the stored layout changes, so old files are rebuilt.
QUANT_FORMAT = 1
DIGESTS = "checkpoint-digests.json"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_digest(folder: Path, cache_dir: Path) -> str:
    """sha256 over the checkpoint's weights and config; per-file digests are remembered by file identity."""
    files = sorted(p for p in Path(folder).iterdir()
                   if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == "config.json"))
    memo_path = Path(cache_dir) / DIGESTS
    try:
        memo = json.loads(memo_path.read_text())
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        memo = {}
    total = hashlib.sha256()
    changed = False
    for path in files:
        st = path.stat()
        identity = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        if not isinstance(memo.get(identity), str):
            memo[identity] = _file_digest(path)
            changed = True
        total.update(f"{path.name}|{memo[identity]}\n".encode())
    if changed:
        try:
            cache.atomic_write(memo_path, json.dumps(memo, indent=0, sort_keys=True).encode())
        except OSError as exc:  # a read-only cache folder costs a re-hash next time, nothing more
            log.warning("could not remember checkpoint digests in %s: %s", memo_path, exc)
    return total.hexdigest()


def cache_key(model: nn.Module, weights: str, chosen: list[Target], checkpoint: str) -> cache.CacheKey:
    device = next(model.parameters()).device
    layout = hashlib.sha256(json.dumps(
        [[t.name, t.precision, list(model.get_submodule(t.name).weight.shape)] for t in chosen]
        + linear_names(model)).encode()).hexdigest()
    identity = cache.device_identity(device)
    library = f"torchao {torchao_version()}" if uses_torchao(device) else "aten packed kernels"
    return cache.CacheKey(backend="llm-weights", precision=weights, weights=f"{checkpoint}:{layout[:16]}",
                          runtime_version=f"torch {torch.__version__}; {library}; format {QUANT_FORMAT}",
                          gpu=identity["gpu"], capability=identity["capability"], max_views=0)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file held in memory (safetensors' load drops them)."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return {str(k): str(v) for k, v in metadata.items()}


def load_or_quantize(model: nn.Module, weights: str, model_dir: Path | None, cache_dir: Path | None) -> str:
    """Quantize ``model`` for ``weights`` in place, from the cache when it holds this exact state.

    Returns where the weights came from: "cache", "quantized (cached)" or "quantized (no checkpoint
    folder to key a cache by)".
    """
    chosen = targets(model, weights)
    if model_dir is None:
        quantize_model(model, weights)
        return "quantized (no checkpoint folder to key a cache by)"
    from safetensors.torch import load as load_safetensors
    from safetensors.torch import save as save_safetensors

    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()  # "": the setting's default
    key = cache_key(model, weights, chosen, checkpoint_digest(Path(model_dir), cache_dir))
    artifact = cache_dir / f"llm-{weights}-{key.digest[:20]}.safetensors"
    with cache.build_lock(artifact):
        try:
            data, _ = cache.read_verified(artifact, key)
            import_state(model, chosen, load_safetensors(data), safetensors_metadata(data))
            return "cache"
        except Exception as exc:  # ArtifactInvalid, or bytes that verify but do not fit: rebuild either way
            if artifact.exists():
                log.warning("quantized weights %s: %s; quantizing again", artifact.name, exc)
        quantize_model(model, weights)
        tensors, metadata = export_state(model, chosen)
        cache.write_artifact(artifact, key, save_safetensors(tensors, metadata=metadata))
    return "quantized (cached)"
