"""The engine cache: keyed, checksummed, atomically written artifacts (ONNX models, TensorRT engines).

The cache folder is untrusted input. An artifact is only loaded when its sidecar metadata names the
exact key we expect (weights, precision, runtime version, GPU) and the artifact's bytes hash to the
checksum recorded there; anything else is rebuilt. The bytes that were verified are the bytes handed
to the runtime (no second read of the file), so a swap between check and load cannot slip through.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

# Bump when the exported graph or the metadata layout changes, so old artifacts are rebuilt.
FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prune2drive" / "engines"


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over the module's state_dict: names, dtypes, shapes and raw bytes, in sorted-name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # uint8 view: works for every dtype (numpy has no bfloat16)
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def device_identity(device: torch.device) -> dict:
    """The GPU name and compute capability, or ``cpu``: engines are specific to both."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"gpu": "cpu", "capability": "cpu"}
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "capability": f"sm_{major}{minor}"}


@dataclass(frozen=True)
class CacheKey:
    backend: str
    precision: str
    weights: str
    runtime_version: str
    gpu: str
    capability: str
    max_views: int
    format_version: int = FORMAT_VERSION

    def fields(self) -> dict:
        return dict(self.__dict__)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()

    def stem(self) -> str:
        # The digest in the name keeps artifacts for different GPUs / versions side by side in one folder.
        return f"vision-{self.backend}-{self.precision}-{self.digest[:20]}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the complete new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp file must be in the same folder: os.replace is only atomic within one file system.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock next to ``path``: concurrent builders of one artifact take turns."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as f:  # a fresh open file description per caller, so threads lock too
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class ArtifactInvalid(Exception):
    """The cached artifact must not be loaded; the message says why (and it will be rebuilt)."""


def read_verified(artifact: Path, key: CacheKey) -> tuple[bytes, dict]:
    """The artifact's bytes and metadata if they match ``key`` and the checksum, else ArtifactInvalid."""
    meta_path = metadata_path(artifact)
    if not artifact.is_file() or not meta_path.is_file():
        raise ArtifactInvalid("not built yet")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactInvalid(f"unreadable metadata: {exc}") from None
    if not isinstance(meta, dict) or meta.get("key") != key.fields():
        found = meta.get("key") if isinstance(meta, dict) else None
        diff = sorted(k for k in key.fields() if not isinstance(found, dict) or found.get(k) != key.fields()[k])
        raise ArtifactInvalid(f"built for another configuration (differs in: {', '.join(diff) or 'layout'})")
    data = artifact.read_bytes()
    if len(data) != meta.get("size") or sha256_bytes(data) != meta.get("sha256"):
        raise ArtifactInvalid("checksum mismatch (corrupt or truncated file)")
    return data, meta


def write_artifact(artifact: Path, key: CacheKey, data: bytes, extra: dict | None = None) -> dict:
    """Atomically write the artifact, then its metadata (a reader between the two sees a mismatch and rebuilds)."""
    meta = {"key": key.fields(), "size": len(data), "sha256": sha256_bytes(data), **(extra or {})}
    atomic_write(artifact, data)
    atomic_write(metadata_path(artifact), json.dumps(meta, indent=1, sort_keys=True).encode())
    return meta


def metadata_path(artifact: Path) -> Path:
    return Path(artifact).with_name(Path(artifact).name + ".json")
