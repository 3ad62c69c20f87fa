"""Data converters: raw recommendation data -> RecBole atomic files under ``<output_dir>/<name>/``.

Command line: ``python -m recbole_letter.data convert --format=... --input=... --name=...``
(``python -m recbole_letter.data convert --help``). Formats: ``letter_json`` (LETTER / LC-Rec JSON),
``amazon2018``, ``amazon2014``, ``yelp``. See docs/data.md.
"""

from recbole_letter.data.amazon import convert_amazon2014, convert_amazon2018
from recbole_letter.data.atomic_files import ConversionError, DatasetStats
from recbole_letter.data.letter_json import convert_letter_json
from recbole_letter.data.text import clean_text
from recbole_letter.data.yelp import convert_yelp

CONVERTERS = {
    "letter_json": convert_letter_json,
    "amazon2018": convert_amazon2018,
    "amazon2014": convert_amazon2014,
    "yelp": convert_yelp,
}


def convert(format, input, output_dir="dataset", name=None, overwrite=False, **options):
    """Convert a released or raw dataset into RecBole atomic files (docs/data.md).

    Args:
        format: a key of ``CONVERTERS`` (``letter_json`` for LETTER's and LC-Rec's JSON, ``amazon2014``,
            ``amazon2018``, ``yelp``).
        input: the source folder, or the ``*.inter.json`` file for ``letter_json``.
        output_dir: where ``<name>/<name>.inter`` and ``.item`` are written.
        name: the dataset's name (required: a ``ConversionError`` without it).
        overwrite: replace an existing dataset folder instead of refusing.
        **options: the format's own keys (``category``, ``kcore``, ``timestamp``, ...).

    Returns:
        ``DatasetStats``: users, items and interactions written.
    """
    if format not in CONVERTERS:
        raise ConversionError(f"unknown format {format!r}; known: {', '.join(CONVERTERS)}")
    if not name:
        raise ConversionError("a dataset name is required (--name), e.g. --name=Beauty")
    return CONVERTERS[format](input, output_dir, name, overwrite=overwrite, **options)


__all__ = [
    "CONVERTERS",
    "ConversionError",
    "DatasetStats",
    "clean_text",
    "convert",
    "convert_amazon2014",
    "convert_amazon2018",
    "convert_letter_json",
    "convert_yelp",
]
