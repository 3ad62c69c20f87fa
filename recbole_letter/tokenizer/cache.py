"""Content-keyed cache files: atomic writes plus a sha256 side file, so partial or corrupted files are
detected (missing side file, checksum mismatch, unreadable) and rebuilt instead of being trusted."""

import hashlib
import json
import os

import numpy as np
import torch


def stable_hash(*parts, length=16):
    """sha256 over a JSON rendering of ``parts`` (numpy arrays hashed by their bytes)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str(part.dtype).encode() + str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"|")
    return digest.hexdigest()[:length]


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_checksum(path):
    tmp = f"{path}.sha256.tmp"
    with open(tmp, "w") as f:
        f.write(file_sha256(path))
    os.replace(tmp, f"{path}.sha256")


def is_valid(path):
    """True when ``path`` and its side file exist and the checksum matches."""
    if not (os.path.isfile(path) and os.path.isfile(f"{path}.sha256")):
        return False
    with open(f"{path}.sha256") as f:
        return f.read().strip() == file_sha256(path)


def save_arrays(path, **arrays):
    """``np.savez`` atomically (``path`` ends in ``.npz``) + checksum."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    _write_checksum(path)


def load_arrays(path):
    """Dict of arrays, or ``None`` when the file is missing, partial or corrupted."""
    if not is_valid(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):
        return None


def save_torch(path, state):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    _write_checksum(path)


def load_torch(path):
    """A state saved by ``save_torch`` (tensors / plain containers only), or ``None`` if not usable."""
    if not is_valid(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (any unreadable checkpoint is rebuilt)
        return None


def save_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def remove(path):
    """Delete ``path`` and its side file if present (e.g. a partial checkpoint once the final file exists)."""
    for name in (path, f"{path}.sha256"):
        if os.path.isfile(name):
            os.remove(name)
