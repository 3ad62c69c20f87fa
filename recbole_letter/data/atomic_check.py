"""Row-by-row check of a dataset's atomic files before RecBole reads them.

RecBole's reader (``pandas.read_csv``, tab-separated, ``"`` as quote character) accepts bad rows quietly:
a short ``.inter`` row gets ``NaN`` in its missing columns and RecBole fills a missing ``float`` with the
column's mean (the user's test item can change); a row without a user or item id is dropped; a field that
starts with ``"`` swallows the separators that follow it. :func:`check_atomic_files_rows` reads every
loaded file first and stops at the first bad row with one line: ``<file>:<line>: <problem>``.

Checked for each file named in ``load_col``: the header (``name:type`` entries with RecBole's types, no
name twice), every non-blank row has as many fields as the header, no field starts with ``"``, and every
loaded ``token`` / ``float`` value is present (``float`` ones are numbers) and none is a text pandas reads
as missing (``NA``, ``null``, ``None``, ``nan``, ``N/A``, ``#N/A``, ...: :data:`PANDAS_NA_TEXTS`); a line of
separators alone is a row of empty values, not a blank line. ``token_seq`` / ``float_seq``
values may be empty (an empty sequence is a value; empty item *text* is checked where text is encoded).
"""

import math
import os

from recbole.utils import FeatureType

_TYPES = {t.value for t in FeatureType}
# the texts pandas' read_csv (RecBole's reader, default na_values) reads as missing: RecBole then drops the row
# (an id) or fills it (a float: the column's mean; a token: '')
PANDAS_NA_TEXTS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})


class AtomicFileError(ValueError):
    """A malformed atomic file; the message is one line naming the file, the line and the problem."""


def _loaded_columns(config, suffix, names):
    """The columns of ``names`` RecBole will load for ``suffix`` (``load_col`` / ``unload_col``)."""
    load_col = config["load_col"]
    unload_col = config["unload_col"] or {}
    if load_col is None:
        loaded = set(names)
    else:
        loaded = set(load_col.get(suffix) or []) & set(names)
    return loaded - set(unload_col.get(suffix) or [])


def check_file(path, loaded=None, separator="\t", encoding="utf-8", unique=None):
    """Check one atomic file; returns its number of data rows. ``loaded``: column names RecBole will load
    (their values must be present), ``None`` = all. ``unique``: ``(column, what)`` whose values may appear
    once (the id of a ``.item`` / ``.user`` file: RecBole keeps the first row of an id and drops the rest)."""
    with open(path, "rb") as f:
        lines = iter(f)
        header_bytes = next(lines, b"")
        try:
            header = header_bytes.decode(encoding).rstrip("\r\n")
        except UnicodeDecodeError:
            raise AtomicFileError(f"{path}:1: not {encoding} text") from None
        if not header:
            raise AtomicFileError(f"{path}:1: no header (expected name:type fields, e.g. user_id:token)")
        names, types = [], []
        for entry in header.split(separator):
            name, _, kind = entry.partition(":")
            if not name or kind not in _TYPES:
                raise AtomicFileError(
                    f"{path}:1: header field {entry!r} is not name:type with a type of {', '.join(sorted(_TYPES))}"
                )
            if name in names:
                raise AtomicFileError(f"{path}:1: header names {name!r} twice")
            names.append(name)
            types.append(kind)
        loaded = set(names) if loaded is None else set(loaded)
        # (position, name, type) of the values that must be present: loaded single-value columns
        required = [(k, n, t) for k, (n, t) in enumerate(zip(names, types)) if n in loaded and not t.endswith("seq")]
        n_fields, n_rows = len(names), 0
        unique_position = names.index(unique[0]) if unique and unique[0] in names else None
        first_lines = {}  # unique id -> the line it first appears on
        for line_number, raw in enumerate(lines, 2):
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError:
                raise AtomicFileError(f"{path}:{line_number}: not {encoding} text") from None
            if not line.strip() and separator not in line:
                continue  # pandas skips blank lines: nothing is read from them (a line of separators is a row)
            fields = line.split(separator)
            if len(fields) != n_fields:
                raise AtomicFileError(f"{path}:{line_number}: expected {n_fields} fields, got {len(fields)}")
            for position, value in enumerate(fields):
                if value.startswith('"'):
                    raise AtomicFileError(
                        f"{path}:{line_number}: field {names[position]!r} starts with '\"', which RecBole's reader "
                        "takes as a quote (it can swallow the following fields); replace '\"' "
                        "(recbole_letter.data.clean_text writes it as '')"
                    )
            for position, name, kind in required:
                value = fields[position]
                if not value.strip():
                    raise AtomicFileError(f"{path}:{line_number}: empty {name} (RecBole would fill or drop it)")
                if kind == "float":
                    try:
                        number = float(value)
                    except ValueError:
                        raise AtomicFileError(f"{path}:{line_number}: {name}={value!r} is not a number") from None
                    if math.isnan(number):
                        raise AtomicFileError(f"{path}:{line_number}: {name} is NaN (RecBole would fill it)")
                elif value in PANDAS_NA_TEXTS:
                    raise AtomicFileError(f"{path}:{line_number}: {name}={value!r}, which RecBole's reader (pandas) "
                                          f"takes as a missing value (RecBole would fill or drop it)")
            if unique_position is not None:
                key = fields[unique_position]
                if key in first_lines:
                    raise AtomicFileError(f"{path}:{line_number}: {unique[1]} {key} appears twice (first at line "
                                          f"{first_lines[key]}; RecBole would keep that row and drop this one)")
                first_lines[key] = line_number
            n_rows += 1
    return n_rows


def check_atomic_files_rows(config):
    """Check every atomic file ``load_col`` names for ``config["dataset"]``; returns ``{suffix: data rows}``.

    Missing files are left to the caller (``quick_start.check_atomic_files`` names them)."""
    rows = {}
    suffixes = ("inter", "user", "item") if config["load_col"] is None else config["load_col"]  # None: all files
    for suffix in suffixes:
        path = os.path.join(config["data_path"], f"{config['dataset']}.{suffix}")
        if not os.path.isfile(path):
            continue
        with open(path, encoding=config["encoding"] or "utf-8", errors="replace") as f:
            names = [entry.partition(":")[0] for entry in f.readline().rstrip("\r\n").split(config["field_separator"])]
        unique = {"item": (config["ITEM_ID_FIELD"], "item"), "user": (config["USER_ID_FIELD"], "user")}.get(suffix)
        rows[suffix] = check_file(
            path, _loaded_columns(config, suffix, names), config["field_separator"], config["encoding"] or "utf-8",
            unique=unique,
        )
    return rows
