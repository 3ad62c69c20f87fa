"""Raw interactions -> chronological user sequences, the LC-Rec / LETTER way.

Steps, in order:
1. drop interactions with items that have no metadata (``items_with_meta``);
2. sort each user's interactions by time (ties keep file order); with ``repeats="first"`` (LC-Rec's
   Amazon rule) keep the first of repeated (user, item) pairs, with ``repeats="keep"`` (LETTER's Yelp:
   users revisit businesses) keep every interaction;
3. iterative k-core: drop users and items with fewer than ``kcore`` interactions (rows, repeats
   included when kept) until none is left;
4. index users by first appearance in the input, items by first appearance in the concatenated
   user sequences (the convention of LETTER's released files: item 0 is the first item of user 0).

Deduplicating before the k-core makes the result a true k-core of distinct pairs.
"""

REPEATS = ("first", "keep")

import numpy as np
import pandas as pd
from tqdm import tqdm

from recbole_letter.data.atomic_files import ConversionError


def build_sequences(interactions, items_with_meta=None, kcore=5, timestamp="time", repeats="first"):
    """``interactions``: DataFrame with columns ``user``, ``item`` (str) and ``time`` (number).

    Returns ``(inter, user_tokens, item_tokens)``: ``inter`` has int columns ``user_id``, ``item_id``
    and float ``timestamp`` (the real time, or with ``timestamp="position"`` the item's position in
    its user's sequence), rows grouped by user and sorted by time; ``user_tokens[k]`` /
    ``item_tokens[k]`` are the raw ids of user/item ``k``.
    """
    if timestamp not in ("time", "position"):
        raise ConversionError(f"timestamp must be 'time' or 'position', got {timestamp!r}")
    if repeats not in REPEATS:
        raise ConversionError(f"repeats must be 'first' or 'keep', got {repeats!r}")
    if kcore < 1:
        raise ConversionError(f"kcore must be >= 1, got {kcore}")
    inter = interactions[["user", "item", "time"]].reset_index(drop=True)
    n_raw = len(inter)

    if items_with_meta is not None:
        inter = inter[inter["item"].isin(items_with_meta)]
        if inter.empty:
            raise ConversionError(f"none of the {n_raw:,} interactions has an item with metadata")

    user_rank = pd.factorize(inter["user"])[0]
    order = np.lexsort((np.arange(len(inter)), inter["time"].to_numpy(), user_rank))
    inter = inter.iloc[order]
    if repeats == "first":
        inter = inter.drop_duplicates(["user", "item"], keep="first")

    inter = _kcore(inter, kcore)
    if inter.empty:
        raise ConversionError(f"no interactions left after {kcore}-core filtering ({n_raw:,} before)")

    for column in ("user", "item"):
        bad = inter[column][inter[column].str.contains(r'[\s"]', regex=True)]
        if len(bad):
            raise ConversionError(f"{column} id {bad.iloc[0]!r} contains whitespace or a quote")
    user_ids, user_tokens = pd.factorize(inter["user"])
    item_ids, item_tokens = pd.factorize(inter["item"])
    if timestamp == "position":
        times = inter.groupby(user_ids, sort=False).cumcount().to_numpy()
    else:
        times = inter["time"].to_numpy()
    result = pd.DataFrame({"user_id": user_ids, "item_id": item_ids, "timestamp": times.astype(np.float64)})
    return result, list(user_tokens), list(item_tokens)


def _kcore(inter, kcore):
    """Iteratively keep users and items with at least ``kcore`` interactions."""
    with tqdm(desc=f"{kcore}-core", unit="rounds", disable=None) as progress:
        while True:
            user_counts = inter["user"].map(inter["user"].value_counts())
            item_counts = inter["item"].map(inter["item"].value_counts())
            keep = (user_counts >= kcore) & (item_counts >= kcore)
            progress.update(1)
            progress.set_postfix(interactions=int(keep.sum()))
            if keep.all():
                return inter
            inter = inter[keep]


def write_sequences(writer, inter, user_tokens, item_tokens, raw_item_field, item_fields, text_fields):
    """Write ``<name>.inter``, ``<name>.item`` and ``<name>.user2id`` through ``writer``, then commit.

    ``item_fields`` maps a raw item id to ``{field: cleaned text}``; the ``.item`` file gets the
    internal item id, the raw id (as ``raw_item_field:token``) and ``text_fields`` as ``token_seq``.
    ``<name>.user2id`` maps raw user ids to internal ones (columns ``raw_user_id``, ``user_id``).
    """
    with writer:
        writer.write_table(
            ".inter",
            ["user_id:token", "item_id:token", "timestamp:float"],
            zip(inter["user_id"].tolist(), inter["item_id"].tolist(), inter["timestamp"].tolist()),
            n_rows=len(inter),
        )
        item_rows = (
            [item_id, raw] + [item_fields.get(raw, {}).get(field, "") for field in text_fields]
            for item_id, raw in enumerate(item_tokens)
        )
        writer.write_table(
            ".item",
            ["item_id:token", f"{raw_item_field}:token"] + [f"{field}:token_seq" for field in text_fields],
            item_rows,
            n_rows=len(item_tokens),
        )
        writer.write_table(".user2id", ["raw_user_id:token", "user_id:token"], enumerate_raw(user_tokens))
        return writer.commit(len(user_tokens), len(item_tokens), len(inter))


def enumerate_raw(tokens):
    return ([raw, index] for index, raw in enumerate(tokens))
