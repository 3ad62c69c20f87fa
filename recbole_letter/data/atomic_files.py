"""Write one RecBole dataset folder (``<output_dir>/<name>/<name>.inter``, ``.item``, ...) all or nothing.

Every file is written into a hidden staging folder next to the target
(``<output_dir>/.<name>.partial-<pid>``), each through a temporary file renamed with ``os.replace``.
Only when all files are complete does the staging folder take the target's place, so a failure at any
point leaves either the previous dataset folder untouched or no folder at all; never a half file.
"""

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field

from tqdm import tqdm


class ConversionError(Exception):
    """Bad input for a converter; its message is the one line shown to the user."""


@dataclass
class DatasetStats:
    name: str
    path: str
    n_users: int
    n_items: int
    n_interactions: int
    files: list = field(default_factory=list)

    def summary(self):
        return (
            f"wrote {self.path}: {self.n_users:,} users, {self.n_items:,} items, "
            f"{self.n_interactions:,} interactions ({', '.join(self.files)})"
        )


@contextmanager
def atomic_open(path):
    """Open ``path`` for writing text; it appears (via ``os.replace``) only if the block succeeds."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def format_number(value):
    """Integral floats without a decimal point (``3`` not ``3.0``); others with ``repr`` precision."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


class DatasetWriter:
    """Collects the files of ``<output_dir>/<name>/`` in a staging folder; ``commit`` publishes them.

    Use as a context manager: leaving the block with an exception removes the staging folder.
    """

    def __init__(self, output_dir, name, overwrite=False):
        if not name or os.sep in name or name.startswith("."):
            raise ConversionError(f"bad dataset name {name!r}: use a plain folder name such as 'Beauty'")
        self.name = name
        self.output_dir = output_dir
        self.target = os.path.join(output_dir, name)
        if os.path.exists(self.target) and not overwrite:
            raise ConversionError(f"output folder {self.target} exists; pass --overwrite to replace it")
        self.overwrite = overwrite
        self.staging = os.path.join(output_dir, f".{name}.partial-{os.getpid()}")
        self.files = []

    def __enter__(self):
        os.makedirs(self.output_dir, exist_ok=True)
        if os.path.exists(self.staging):
            shutil.rmtree(self.staging)
        os.makedirs(self.staging)
        return self

    def __exit__(self, exc_type, exc, tb):
        if os.path.exists(self.staging):
            shutil.rmtree(self.staging)
        return False

    def _path(self, suffix):
        filename = f"{self.name}{suffix}"
        self.files.append(filename)
        return os.path.join(self.staging, filename)

    def write_table(self, suffix, header, rows, n_rows=None):
        """Write an atomic file: ``header`` is ``["user_id:token", ...]``, ``rows`` yields value lists.

        Values must already be clean (no tab/newline); floats are formatted by ``format_number``.
        """
        with atomic_open(self._path(suffix)) as f:
            f.write("\t".join(header) + "\n")
            for row in tqdm(rows, total=n_rows, desc=f"write {self.name}{suffix}", unit="rows", disable=None):
                f.write("\t".join(format_number(v) if isinstance(v, float) else str(v) for v in row) + "\n")

    def copy_file(self, suffix, source):
        with atomic_open(self._path(suffix)) as f, open(source, encoding="utf-8") as src:
            shutil.copyfileobj(src, f)

    def commit(self, n_users, n_items, n_interactions):
        """Move the staging folder into place (replacing an old folder only now) and return stats."""
        old = None
        if os.path.exists(self.target):
            if not self.overwrite:  # appeared while we were converting
                raise ConversionError(f"output folder {self.target} exists; pass --overwrite to replace it")
            old = os.path.join(self.output_dir, f".{self.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.staging, self.target)
        if old is not None:
            shutil.rmtree(old)
        return DatasetStats(self.name, self.target, n_users, n_items, n_interactions, list(self.files))
