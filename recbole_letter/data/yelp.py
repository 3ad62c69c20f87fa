"""Yelp Open Dataset -> RecBole atomic files.

Input folder: ``yelp_academic_dataset_review.json`` (``user_id``, ``business_id``, ``date``) and
``yelp_academic_dataset_business.json`` (``business_id``, ``name``, ``city``, ``categories``).
``start_date`` / ``end_date`` (``YYYY-MM-DD``, both inclusive) keep reviews inside a window; the
paper's "Yelp (2019)" is ``start_date=2019-01-01, end_date=2019-12-31``. Then: businesses without a
business record dropped, each user's reviews sorted by time, **every** review kept (``repeats="keep"``:
LETTER's Yelp keeps users' repeat visits, 316,354 interactions over 304,524 distinct pairs;
``repeats="first"`` is LC-Rec's Amazon rule), iterative k-core over the kept rows.

Item text, under the column names of LETTER's ``Yelp.item.json`` so that either source loads with
``properties/dataset/Yelp.yaml``: ``title`` = the business name, ``description`` = its categories; plus
``city`` (not in the release).
"""

import os
from datetime import datetime

import pandas as pd

from recbole_letter.data.atomic_files import ConversionError, DatasetWriter
from recbole_letter.data.raw_files import find_file, iter_records
from recbole_letter.data.sequences import build_sequences, write_sequences
from recbole_letter.data.text import clean_text

# atomic column <- business record field (title/description: the names LETTER's Yelp.item.json uses)
YELP_TEXT_FIELDS = {"title": "name", "description": "categories", "city": "city"}
REVIEW_FILE = "yelp_academic_dataset_review.json"
BUSINESS_FILE = "yelp_academic_dataset_business.json"


def _check_date(value, option):
    if value is None:
        return None
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise ConversionError(f"{option} must be a date YYYY-MM-DD, got {value!r}") from None
    return value


def read_reviews(path, start_date=None, end_date=None):
    """Reviews inside the window -> DataFrame ``user, item, time`` (unix seconds)."""
    users, items, dates, line_numbers = [], [], [], []
    for line_number, review in iter_records(path, ("user_id", "business_id", "date")):
        day = str(review["date"])[:10]  # "2019-03-09 21:45:08": comparing the ISO day as text is exact
        if (start_date and day < start_date) or (end_date and day > end_date):
            continue
        users.append(str(review["user_id"]))
        items.append(str(review["business_id"]))
        dates.append(str(review["date"]))
        line_numbers.append(line_number)
    if not users:
        raise ConversionError(f"{path}: no review between {start_date or 'the start'} and {end_date or 'the end'}")
    times = pd.to_datetime(pd.Series(dates), format="ISO8601", errors="coerce")
    bad = times.isna().to_numpy()
    if bad.any():
        first = bad.argmax()
        raise ConversionError(f"{path}:{line_numbers[first]}: bad date {dates[first]!r}")
    seconds = (times - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    return pd.DataFrame({"user": users, "item": items, "time": seconds.astype("float64")})


def read_businesses(path, businesses):
    """``{business_id: {title, description, city}}`` for the businesses in ``businesses``."""
    meta = {}
    for _, record in iter_records(path, ("business_id",)):
        business = str(record["business_id"])
        if business in businesses and business not in meta:
            meta[business] = {column: clean_text(record.get(field)) for column, field in YELP_TEXT_FIELDS.items()}
    return meta


def convert_yelp(input_dir, output_dir, name, start_date=None, end_date=None, kcore=5, timestamp="time",
                 overwrite=False, repeats="keep"):
    """Convert the Yelp Open Dataset; returns ``DatasetStats``. See the module docstring."""
    writer = DatasetWriter(output_dir, name, overwrite)
    start_date = _check_date(start_date, "--start_date")
    end_date = _check_date(end_date, "--end_date")
    if start_date and end_date and start_date > end_date:
        raise ConversionError(f"--start_date {start_date} is after --end_date {end_date}")
    if not os.path.isdir(input_dir):
        raise ConversionError(f"input folder {input_dir} not found")
    review_path = find_file(input_dir, [REVIEW_FILE, f"{REVIEW_FILE}.gz"], "Yelp reviews")
    business_path = find_file(input_dir, [BUSINESS_FILE, f"{BUSINESS_FILE}.gz"], "Yelp businesses")
    interactions = read_reviews(review_path, start_date, end_date)
    meta = read_businesses(business_path, set(interactions["item"]))
    inter, user_tokens, item_tokens = build_sequences(interactions, set(meta), kcore, timestamp, repeats)
    return write_sequences(writer, inter, user_tokens, item_tokens, "business_id", meta, list(YELP_TEXT_FIELDS))
