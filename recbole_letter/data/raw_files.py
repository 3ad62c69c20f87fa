"""Reading raw source files line by line, with errors that name the file and the line."""

import ast
import gzip
import json
import os

from tqdm import tqdm

from recbole_letter.data.atomic_files import ConversionError


def require_file(path, what):
    """``path`` if it is a non-empty file, else a ``ConversionError`` naming ``what`` it should hold."""
    if not os.path.isfile(path):
        raise ConversionError(f"missing {what}: {path} not found")
    if os.path.getsize(path) == 0:
        raise ConversionError(f"empty file: {path} ({what})")
    return path


def find_file(folder, candidates, what):
    """The first of ``candidates`` (file names) that exists in ``folder``."""
    if not os.path.isdir(folder):
        raise ConversionError(f"input folder {folder} not found")
    for name in candidates:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return require_file(path, what)
    raise ConversionError(f"missing {what}: none of {', '.join(candidates)} in {folder}")


def open_text(path):
    """Open a text file, transparently gunzipping ``*.gz``."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _parse_python_literal(line):
    """Amazon 2014 metadata lines are Python dict literals (single quotes); never ``eval`` them."""
    return ast.literal_eval(line)


def iter_records(path, required_fields=(), python_literals=False, desc=None):
    """Yield ``(line_number, dict)`` for each non-blank line of a JSON-lines file.

    With ``python_literals`` a line that is not JSON is parsed with ``ast.literal_eval`` (literals
    only: no names, calls or code). A line that parses to no dict, or lacks one of
    ``required_fields``, raises ``ConversionError("<path>:<line>: ...")``. A file without any record
    raises too.
    """
    n_records = 0
    try:
        with open_text(path) as f:
            for line_number, line in enumerate(tqdm(f, desc=desc or os.path.basename(path), unit="lines", disable=None), 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as json_error:
                    if not python_literals:
                        raise ConversionError(f"{path}:{line_number}: malformed JSON ({json_error.msg})") from None
                    try:
                        record = _parse_python_literal(line)
                    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as literal_error:
                        reason = type(literal_error).__name__
                        raise ConversionError(f"{path}:{line_number}: malformed record ({reason})") from None
                if not isinstance(record, dict):
                    raise ConversionError(f"{path}:{line_number}: expected an object, got {type(record).__name__}")
                missing = [k for k in required_fields if record.get(k) in (None, "")]
                if missing:
                    raise ConversionError(f"{path}:{line_number}: missing field {missing[0]!r}")
                n_records += 1
                yield line_number, record
    except (OSError, EOFError, UnicodeDecodeError) as read_error:  # truncated gzip, bad bytes, ...
        raise ConversionError(f"{path}: cannot read ({type(read_error).__name__}: {read_error})") from None
    if n_records == 0:
        raise ConversionError(f"empty file: {path} has no records")
