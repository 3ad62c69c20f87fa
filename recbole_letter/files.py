"""Writes that neither a crash nor a concurrent writer can leave half done.

Every file is first written under a temporary name of its own (same folder, so ``os.replace`` is an atomic
rename; the writer's pid and random hex in the name, so two writers never share one) and then renamed over
the target. Readers see the old file or the new one, never a mix; a failed write leaves no temporary file.
``locked`` serialises writers that must update more than one file together (a cache file and its checksum,
a rows file and the tables made from it).
"""

import contextlib
import fcntl
import os
import secrets


def temporary_name(path, suffix=None):
    """A name next to ``path`` that no other writer uses: ``.<name>.<pid>-<hex>.tmp<suffix>``; ``suffix``
    defaults to the target's extension (``np.savez`` adds ``.npz`` to a name without it: pass ``".npz"``)."""
    folder, name = os.path.split(os.fspath(path))
    suffix = os.path.splitext(name)[1] if suffix is None else suffix
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, fsync=False, suffix=None):
    """A temporary path to write to; it replaces ``path`` when the block succeeds, and is removed when it fails.

    Args:
        path: the file to create or replace (its folder is created if missing).
        fsync: flush the new file and its folder to disk before returning (survives a power loss, not only
            a killed process; costs a disk flush).
        suffix: the temporary name's ending (see :func:`temporary_name`).

    Yields:
        str: the temporary path.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise FileNotFoundError(f"writing {path}: the writer created no file at {tmp}")
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(os.path.dirname(path) or ".")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path, write, fsync=False, suffix=None):
    """``write(temporary_path)`` (e.g. ``lambda p: torch.save(state, p)``, or ``np.savez`` with
    ``suffix=".npz"``), then the result replaces ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync, suffix=suffix) as tmp:
        write(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="w", fsync=False):
    """``open`` a temporary file for writing (``"w"`` text as UTF-8 with ``\\n`` line ends, or ``"wb"``); it
    replaces ``path`` when the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', got {mode!r}")
    text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, mode, **text) as f:
        yield f


def write_text_atomic(path, text, fsync=False):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", fsync=fsync) as f:
        f.write(text)


@contextlib.contextmanager
def locked(path):
    """Hold an exclusive ``fcntl.flock`` on ``<path>.lock`` for the block: writers of ``path`` (and of files
    kept in step with it) that all take it run one at a time, across processes and threads."""
    lock_path = f"{os.fspath(path)}.lock"
    os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
