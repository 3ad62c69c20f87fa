"""Item text: cleaning for RecBole's atomic-file reader, and assembly into one string per item.

RecBole reads atomic files with ``pandas.read_csv(sep="\\t")`` and the default quote character, and
splits ``token_seq`` fields on single spaces. So a text field must hold no tab or newline (they break
the row), no ``"`` (it opens a quoted field that swallows the following separators), and no runs of
spaces (empty tokens). ``clean_text`` makes any string safe; joining a ``token_seq`` field's tokens
with one space then gives the cleaned text back exactly (``item_texts_from_dataset``).
"""

import html
import re

import numpy as np
import pandas as pd

_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # <br>, </b>, <a href=...>: a letter right after '<'
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WHITESPACE = re.compile(r"\s+")  # tabs, newlines, \xa0 (from &nbsp;) ...


def clean_text(value):
    """One line of plain text: HTML entities unescaped, tags dropped, ``"`` -> ``''``, spaces collapsed.

    ``None`` gives ``""``; lists and tuples are cleaned element-wise and joined with ``", "`` (empty
    elements skipped); numbers are written with ``str``.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return join_texts(value, ", ")
    text = str(value)
    for _ in range(3):  # some sources escape twice ("&amp;quot;"); stop once nothing changes
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _HTML_TAG.sub(" ", text)
    text = _CONTROL_CHARS.sub(" ", text)
    text = text.replace('"', "''")
    return _WHITESPACE.sub(" ", text).strip()


def join_texts(values, separator):
    """Clean each value (nested lists are flattened), drop empty and repeated ones, join the rest."""
    parts = []
    for text in _flat_texts(values):
        if text and text not in parts:
            parts.append(text)
    return separator.join(parts)


def _flat_texts(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _flat_texts(value)
        else:
            yield clean_text(value)


def item_text(fields, text_fields, with_field_names=True):
    """Assemble one item's text from ``fields`` (a mapping field -> cleaned text).

    Empty fields are skipped. With field names: ``"title: OPI Nail Lacquer; brand: OPI"``; without:
    the values joined by ``". "``.
    """
    parts = []
    for field in text_fields:
        value = fields.get(field) or ""
        if value:
            parts.append(f"{field}: {value}" if with_field_names else value)
    return ("; " if with_field_names else ". ").join(parts)


def item_texts_from_dataset(dataset, text_fields, with_field_names=True):
    """One text per RecBole internal item id (index 0, the padding item, gets ``""``).

    ``text_fields`` must be ``token_seq`` (or ``token``) fields of the dataset's item features, e.g.
    ``["title", "categories"]`` loaded through ``load_col: {item: [item_id, title, categories]}``.
    """
    item_feat = dataset.item_feat  # a DataFrame before data_preparation, an Interaction after
    if item_feat is None:
        raise ValueError(f"dataset {dataset.dataset_name} has no item features (.item file not loaded)")
    loaded = list(item_feat.columns) if isinstance(item_feat, pd.DataFrame) else list(item_feat.interaction)
    missing = [f for f in text_fields if f not in loaded]
    if missing:
        raise ValueError(
            f"dataset {dataset.dataset_name}: text field(s) {missing} not loaded from its .item file "
            f"(loaded: {sorted(set(loaded) - {dataset.iid_field})}); add them to load_col"
        )
    n_items = dataset.item_num  # item_feat rows are ordered by item id (RecBole sorts them)
    columns = {}
    for field in text_fields:
        id2token = dataset.field2id_token[field]
        values = item_feat[field] if isinstance(item_feat, pd.DataFrame) else item_feat[field].numpy()
        columns[field] = [" ".join(id2token[t] for t in _token_ids(v)) for v in values]
    texts = [""] * n_items
    for item in range(1, n_items):
        texts[item] = item_text({f: columns[f][item] for f in text_fields}, text_fields, with_field_names)
    return texts


def _token_ids(value):
    """Token ids of one item's field value: an id, an array of ids (0 = padding), or NaN (none)."""
    ids = np.asarray(value, dtype=np.float64).ravel()
    return [int(t) for t in ids if not np.isnan(t) and t != 0]
