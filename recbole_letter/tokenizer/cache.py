"""Content-keyed cache files: atomic writes plus a sha256 side file, so partial or corrupted files are
detected (missing side file, checksum mismatch, unreadable) and rebuilt instead of being trusted.

Every write goes through ``recbole_letter.files`` (a temporary name per writer, then ``os.replace``); a file
and its side file are written under one lock (``<path>.lock``), so concurrent writers (DDP ranks, parallel
runs sharing a cache folder) leave a matching pair."""

import hashlib
import json
import os

import numpy as np
import torch

from recbole_letter.files import locked, write_atomic, write_text_atomic


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


def _write_with_checksum(path, write, suffix=None):
    """``write(temporary_path)``, then the file and its ``.sha256`` side file take their places (one writer
    at a time: the side file always names the file beside it, except for a reader caught between the two
    renames, who sees a mismatch and rebuilds)."""
    with locked(path):
        write_atomic(path, write, suffix=suffix)
        write_text_atomic(f"{path}.sha256", file_sha256(path))


def is_valid(path):
    """True when ``path`` and its side file exist and the checksum matches."""
    if not (os.path.isfile(path) and os.path.isfile(f"{path}.sha256")):
        return False
    with open(f"{path}.sha256") as f:
        return f.read().strip() == file_sha256(path)


def save_arrays(path, **arrays):
    """``np.savez`` atomically (``path`` ends in ``.npz``) + checksum."""
    _write_with_checksum(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


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
    """``torch.save`` atomically + checksum (``state``: tensors and plain containers, what ``load_torch`` reads)."""
    _write_with_checksum(path, lambda tmp: torch.save(state, tmp))


def load_torch(path):
    """A state saved by ``save_torch`` (tensors / plain containers only), or ``None`` if not usable."""
    if not is_valid(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (any unreadable checkpoint is rebuilt)
        return None


def save_json(path, obj):
    """``obj`` as indented JSON, written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def remove(path):
    """Delete ``path`` and its side file if present (e.g. a partial checkpoint once the final file exists)."""
    for name in (path, f"{path}.sha256"):
        if os.path.isfile(name):
            os.remove(name)
