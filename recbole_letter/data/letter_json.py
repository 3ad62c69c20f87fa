"""LETTER / LC-Rec JSON -> RecBole atomic files.

Input (``<stem>`` is e.g. ``Beauty``):
- ``<stem>.inter.json``: ``{"<user>": [item, item, ...]}``, each list in time order;
- ``<stem>.item.json`` (optional): ``{"<item>": {"title": ..., "description": ..., ...}}``;
- ``<stem>.index.json`` (optional): item codes ``{"<item>": ["<a_12>", "<b_3>", ...]}``.

Output: ``<name>.inter`` (``timestamp`` = position in the user's sequence, so RecBole's
``order: TO`` + leave-one-out reproduces LETTER's split), ``<name>.item`` (item id + text fields as
``token_seq``), and ``<name>.index.json`` (a verbatim copy, for ``item_codes_file``).
"""

import glob
import json
import os
import re

from recbole_letter.data.atomic_files import ConversionError, DatasetWriter
from recbole_letter.data.raw_files import require_file
from recbole_letter.data.text import clean_text

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def find_inter_json(input_path):
    """``input_path`` itself if it is a ``*.inter.json`` file, else the single one in that folder."""
    if os.path.isdir(input_path):
        found = sorted(glob.glob(os.path.join(input_path, "*.inter.json")))
        if len(found) != 1:
            raise ConversionError(
                f"expected exactly one *.inter.json in {input_path}, found {len(found)}"
                + (f" ({', '.join(os.path.basename(p) for p in found)}): pass the file itself" if found else "")
            )
        return found[0]
    if not input_path.endswith(".inter.json"):
        raise ConversionError(f"--input must be a *.inter.json file or a folder holding one, got {input_path}")
    return require_file(input_path, "LETTER interactions (*.inter.json)")


def _load_json(path, what):
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ConversionError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from None
        except UnicodeDecodeError as error:
            raise ConversionError(f"{path}: not UTF-8 text ({error.reason})") from None


def _load_sequences(path):
    sequences = _load_json(path, "LETTER interactions (*.inter.json)")
    if not isinstance(sequences, dict):
        raise ConversionError(f"{path}: expected an object {{user: [items]}}, got {type(sequences).__name__}")
    if not sequences:
        raise ConversionError(f"empty file: {path} has no users")
    for user, items in sequences.items():
        if not isinstance(items, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in items):
            raise ConversionError(f"{path}: user {user!r}: expected a list of item ids, got {json.dumps(items)[:60]}")
    return sequences


def _item_text_fields(path, item_meta, text_fields):
    if not isinstance(item_meta, dict) or not all(isinstance(v, dict) for v in item_meta.values()):
        raise ConversionError(f"{path}: expected an object {{item: {{field: text}}}}")
    if text_fields is None:  # every field that holds text somewhere, in first-seen order
        text_fields = []
        for meta in item_meta.values():
            for key, value in meta.items():
                if key not in text_fields and isinstance(value, (str, list)):
                    text_fields.append(key)
    for name in text_fields:
        if not _FIELD_NAME.fullmatch(name) or name == "item_id":
            raise ConversionError(f"{path}: text field name {name!r} cannot be a RecBole field name")
    return list(text_fields)


def _check_index(path, codes, items):
    if not isinstance(codes, dict) or not all(isinstance(v, list) for v in codes.values()):
        raise ConversionError(f"{path}: expected an object {{item: [code tokens]}}")
    missing = [item for item in items if item not in codes]
    if missing:
        raise ConversionError(f"{path}: {len(missing)} items have no codes (e.g. {missing[:3]})")


def convert_letter_json(input_path, output_dir, name, overwrite=False, text_fields=None):
    """Convert LETTER / LC-Rec JSON files; returns ``DatasetStats``. See the module docstring."""
    writer = DatasetWriter(output_dir, name, overwrite)
    inter_path = find_inter_json(input_path)
    stem = os.path.basename(inter_path)[: -len(".inter.json")]
    folder = os.path.dirname(inter_path)
    item_path = os.path.join(folder, f"{stem}.item.json")
    index_path = os.path.join(folder, f"{stem}.index.json")

    sequences = _load_sequences(inter_path)
    items = list(dict.fromkeys(str(i) for seq in sequences.values() for i in seq))
    rows = [(str(user), str(item), pos) for user, seq in sequences.items() for pos, item in enumerate(seq)]
    if not rows:
        raise ConversionError(f"empty file: {inter_path} has no interactions")
    n_users = sum(1 for seq in sequences.values() if seq)

    item_meta, fields = None, []
    if os.path.exists(item_path):
        item_meta = _load_json(item_path, "LETTER item text (*.item.json)")
        fields = _item_text_fields(item_path, item_meta, text_fields)
        no_text = sum(1 for item in items if item not in item_meta)
        if no_text:
            print(f"warning: {item_path}: {no_text} of {len(items)} items have no entry; their text is empty")
    elif text_fields:
        raise ConversionError(f"--text_fields given but {item_path} not found")

    codes = None
    if os.path.exists(index_path):
        codes = _load_json(index_path, "LETTER item codes (*.index.json)")
        _check_index(index_path, codes, items)

    with writer:
        writer.write_table(
            ".inter", ["user_id:token", "item_id:token", "timestamp:float"], rows, n_rows=len(rows)
        )
        item_rows = (
            [item] + [clean_text((item_meta or {}).get(item, {}).get(field)) for field in fields] for item in items
        )
        writer.write_table(
            ".item", ["item_id:token"] + [f"{field}:token_seq" for field in fields], item_rows, n_rows=len(items)
        )
        if codes is not None:
            writer.copy_file(".index.json", index_path)
        return writer.commit(n_users, len(items), len(rows))
