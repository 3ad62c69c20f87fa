"""Item text cleaning for RecBole's atomic-file reader.

RecBole reads atomic files with ``pandas.read_csv(sep="\\t")`` and the default quote character, and
splits ``token_seq`` fields on single spaces. So a text field must hold no tab or newline (they break
the row), no ``"`` (it opens a quoted field that swallows the following separators), and no runs of
spaces (empty tokens). ``clean_text`` makes any string safe; joining a ``token_seq`` field's tokens
with one space then gives the cleaned text back exactly (what the tokenizer's
``recbole_letter.tokenizer.text_encoder.item_texts`` reads).
"""

import html
import re


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
