"""Amazon review data (2014: McAuley et al.; 2018: Ni, Li & McAuley) -> RecBole atomic files.

Files expected in the input folder (``.json`` instead of ``.json.gz`` works too):

| version | interactions | metadata |
|---|---|---|
| 2018 | ``<Category>.csv`` (ratings: ``item,user,rating,timestamp``, no header) or ``<Category>_5.json.gz`` (reviews) | ``meta_<Category>.json.gz`` (JSON lines) |
| 2014 | ``reviews_<Category>_5.json.gz`` | ``meta_<Category>.json.gz`` (Python dict literals) |

Processing follows LC-Rec (see ``sequences.build_sequences``): items without metadata dropped, first of
repeated user-item pairs kept (``repeats="first"``; ``"keep"`` keeps them all), iterative k-core, each
user's items sorted by time. Item text: title,
description, brand, categories (cleaned by ``text.clean_text``).
"""

import os
import re

import numpy as np
import pandas as pd

from recbole_letter.data.atomic_files import ConversionError, DatasetWriter
from recbole_letter.data.raw_files import find_file, iter_records, require_file
from recbole_letter.data.sequences import build_sequences, write_sequences
from recbole_letter.data.text import clean_text, join_texts

AMAZON_TEXT_FIELDS = ["title", "description", "brand", "categories"]


def _gz_or_plain(name):
    return [f"{name}.gz", name]


def read_ratings_csv(path):
    """Amazon 2018 ratings ``item,user,rating,timestamp`` -> DataFrame ``user, item, time``."""
    require_file(path, "Amazon ratings (<Category>.csv)")
    try:
        table = pd.read_csv(
            path, header=None, names=["item", "user", "rating", "time"], dtype=str,
            keep_default_na=False, on_bad_lines="error",
        )
    except pd.errors.ParserError as error:  # "... Expected 4 fields in line 3, saw 5"
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if match is None:
            raise ConversionError(f"{path}: malformed CSV ({str(error).strip()})") from None
        expected, line_number, seen = match.groups()
        raise ConversionError(f"{path}:{line_number}: malformed line ({seen} fields, expected {expected})") from None
    except pd.errors.EmptyDataError:
        raise ConversionError(f"empty file: {path}") from None
    times = pd.to_numeric(table["time"], errors="coerce")
    ids = table[["item", "user"]]
    bad = (ids.isna() | (ids == "")).any(axis=1) | times.isna()
    if bad.any():
        line_number = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise ConversionError(f"{path}:{line_number}: malformed line (expected item,user,rating,timestamp)")
    return pd.DataFrame({"user": table["user"], "item": table["item"], "time": times.astype(np.float64)})


def read_reviews(path):
    """Amazon 2014/2018 review JSON lines -> DataFrame ``user, item, time`` (``unixReviewTime``)."""
    users, items, times = [], [], []
    for line_number, review in iter_records(path, ("reviewerID", "asin", "unixReviewTime")):
        try:
            times.append(float(review["unixReviewTime"]))
        except (TypeError, ValueError):
            raise ConversionError(f"{path}:{line_number}: unixReviewTime is not a number") from None
        users.append(str(review["reviewerID"]))
        items.append(str(review["asin"]))
    return pd.DataFrame({"user": users, "item": items, "time": times})


def read_item_meta(path, items, python_literals):
    """``{asin: {title, description, brand, categories}}`` for the asins in ``items`` (first record wins)."""
    meta = {}
    for _, record in iter_records(path, ("asin",), python_literals=python_literals):
        asin = str(record["asin"])
        if asin not in items or asin in meta:
            continue
        # 2018: "category" is a flat list and "description" a list of paragraphs;
        # 2014: "categories" is a list of category paths and "description" a string.
        categories = record.get("categories", record.get("category"))
        description = record.get("description")
        meta[asin] = {
            "title": clean_text(record.get("title")),
            "description": join_texts(description, " ") if isinstance(description, list) else clean_text(description),
            "brand": clean_text(record.get("brand")),
            "categories": join_texts(categories, ", ") if isinstance(categories, list) else clean_text(categories),
        }
    return meta


def _convert(interactions, meta_path, python_literals, writer, kcore, timestamp, repeats):
    meta = read_item_meta(meta_path, set(interactions["item"]), python_literals)
    inter, user_tokens, item_tokens = build_sequences(interactions, set(meta), kcore, timestamp, repeats)
    return write_sequences(writer, inter, user_tokens, item_tokens, "asin", meta, AMAZON_TEXT_FIELDS)


def convert_amazon2018(input_dir, output_dir, name, category, interactions="auto", kcore=5,
                       timestamp="time", overwrite=False, repeats="first"):
    """Amazon 2018: ``interactions`` picks ``"csv"`` (ratings) or ``"reviews"`` (5-core reviews);
    ``"auto"`` takes whichever exists and refuses to guess when both do."""
    writer = DatasetWriter(output_dir, name, overwrite)
    if not os.path.isdir(input_dir):
        raise ConversionError(f"input folder {input_dir} not found")
    csv_path = os.path.join(input_dir, f"{category}.csv")
    reviews_names = _gz_or_plain(f"{category}_5.json")
    has_reviews = any(os.path.exists(os.path.join(input_dir, n)) for n in reviews_names)
    if interactions == "auto":
        if os.path.exists(csv_path) and has_reviews:
            raise ConversionError(
                f"both {category}.csv and {category}_5.json(.gz) are in {input_dir}: choose with --interactions=csv|reviews"
            )
        interactions = "csv" if os.path.exists(csv_path) else "reviews"
    if interactions == "csv":
        table = read_ratings_csv(csv_path)
    elif interactions == "reviews":
        table = read_reviews(find_file(input_dir, reviews_names, "Amazon 2018 reviews"))
    else:
        raise ConversionError(f"--interactions must be auto, csv or reviews, got {interactions!r}")
    meta_path = find_file(input_dir, _gz_or_plain(f"meta_{category}.json"), "Amazon 2018 metadata")
    return _convert(table, meta_path, False, writer, kcore, timestamp, repeats)


def convert_amazon2014(input_dir, output_dir, name, category, kcore=5, timestamp="time", overwrite=False,
                       repeats="first"):
    """Amazon 2014: ``reviews_<Category>_5.json.gz`` + ``meta_<Category>.json.gz``."""
    writer = DatasetWriter(output_dir, name, overwrite)
    reviews_path = find_file(input_dir, _gz_or_plain(f"reviews_{category}_5.json"), "Amazon 2014 reviews")
    meta_path = find_file(input_dir, _gz_or_plain(f"meta_{category}.json"), "Amazon 2014 metadata")
    return _convert(read_reviews(reviews_path), meta_path, True, writer, kcore, timestamp, repeats)
