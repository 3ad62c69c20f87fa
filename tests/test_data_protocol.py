"""The paper's protocol from every source format, loaded with the shipped property files; bad atomic rows;
what RecBole's filters removed.

Each format gets a small fixture with the release's field names (written here to tmp_path), shaped like
the paper's data: already 5-core, and for Yelp with repeat visits (the paper keeps them). Loading it
through ``quick_start.prepare`` with ``properties/dataset/<name>.yaml`` must keep every user, item and
interaction; the expected counts come from the fixture's definition, not from the converter.
"""

import gzip
import json
import logging
import os

import pytest

from recbole_letter import quick_start
from recbole_letter.data import convert_amazon2014, convert_amazon2018, convert_letter_json, convert_yelp
from recbole_letter.data.atomic_check import AtomicFileError, check_atomic_files_rows, check_file
from recbole_letter.data import filter_report
from recbole_letter.data.filter_report import log_filter_report, recording_filters
from recbole_letter.data.sequences import build_sequences
from recbole_letter.tokenizer.text_encoder import item_texts

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")

# 8 users x 5 distinct items over 6 items: a 5-core (every item is seen 6 or 7 times)
DISTINCT = {f"u{k}": [f"i{(k + j) % 6}" for j in range(5)] for k in range(8)}
# Yelp's shape: u0's last visit (its test target) repeats its first; u8 has 5 visits to 4 businesses
REPEATS = {**DISTINCT, "u0": DISTINCT["u0"] + ["i0"], "u8": ["i0", "i1", "i0", "i2", "i3"]}
TEXT = {f"i{k}": {"name": f"Shop {k}", "categories": f"Food, Kind {k}", "city": "Tucson"} for k in range(6)}


def counts_of(sequences):
    """(users, items, interactions) as the paper counts them: every interaction, repeats included."""
    return len(sequences), len({i for s in sequences.values() for i in s}), sum(map(len, sequences.values()))


def write_lines(path, lines):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def timed(sequences):
    """(user, item, unix time) rows, each user's in order, one day apart."""
    return [(u, i, 1_546_300_800 + 86_400 * (10 * n + t)) for n, (u, s) in enumerate(sequences.items())
            for t, i in enumerate(s)]  # fmt: skip


def load(name, data_path, **overrides):
    """``prepare`` a baseline on ``<data_path>/<name>`` with the shipped property files; returns the config,
    ``(users, items, interactions)`` after RecBole's filters (prepare's own filter report) and the
    training split."""
    reports = []

    def spy(*args, **kwargs):
        reports.append(log_filter_report(*args, **kwargs))
        return reports[-1]

    config_dict = {"data_path": str(data_path), "show_progress": False, "state": "WARNING", **overrides}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(filter_report, "log_filter_report", spy)
        config, _, train_data, _, _ = quick_start.prepare("SASRec", name, config_dict=config_dict)
    kept = reports[0]["kept"]
    assert reports[0]["catalogue_items"] == kept["items"]  # no item outside the interactions
    return config, (kept["users"], kept["items"], kept["interactions"]), train_data.dataset


def loaded_counts(dataset):
    """(users, items, interactions) of a dataset straight out of ``create_dataset``."""
    inter = dataset.inter_feat
    return inter[dataset.uid_field].nunique(), inter[dataset.iid_field].nunique(), len(inter)


# ---- each source format, with the shipped dataset/<name>.yaml ----------------------------------
def letter_json(folder, stem, sequences, item_fields):
    """The release's layout: ``<stem>.inter.json`` {user_idx: [item_idx, ...]}, ``<stem>.item.json``."""
    folder.mkdir(parents=True)
    user_idx = {u: str(k) for k, u in enumerate(sequences)}
    item_idx = {i: k for k, i in enumerate(sorted({i for s in sequences.values() for i in s}))}
    (folder / f"{stem}.inter.json").write_text(json.dumps(
        {user_idx[u]: [item_idx[i] for i in s] for u, s in sequences.items()}))
    if item_fields:
        (folder / f"{stem}.item.json").write_text(json.dumps(
            {str(item_idx[i]): item_fields(TEXT[i]) for i in item_idx}))
    return folder


def test_letter_json_yelp_keeps_repeats_and_text(tmp_path):
    # LETTER's Yelp.item.json: title = business name, description = categories
    raw = letter_json(tmp_path / "raw", "Yelp", REPEATS, lambda t: {"title": t["name"], "description": t["categories"]})
    convert_letter_json(str(raw), str(tmp_path / "d"), "Yelp")
    config, counts, train = load("Yelp", tmp_path / "d")
    assert counts == counts_of(REPEATS) == (9, 6, 46)  # 44 distinct pairs: repeats kept
    titles, descriptions = item_texts(train, config["text_fields"])
    assert sorted(titles[1:]) == [f"Shop {k}" for k in range(6)]
    assert sorted(descriptions[1:]) == [f"Food, Kind {k}" for k in range(6)]


def test_lc_rec_json_instruments(tmp_path):
    # LC-Rec's Instruments.item.json fields; the shipped file encodes title and description
    def fields(t):
        return {"title": t["name"], "description": t["categories"], "brand": "B", "categories": "Music"}

    raw = letter_json(tmp_path / "raw", "Instruments", DISTINCT, fields)
    convert_letter_json(str(raw), str(tmp_path / "d"), "Instruments")
    config, counts, train = load("Instruments", tmp_path / "d")
    assert counts == counts_of(DISTINCT) == (8, 6, 40)
    assert config["text_fields"] == ["title", "description"]
    assert all(text for field in item_texts(train, config["text_fields"]) for text in field[1:])


def test_letter_json_beauty_without_item_text(tmp_path):
    # the release's Beauty folder has interactions and codes only: a baseline loads it all the same
    raw = letter_json(tmp_path / "raw", "Beauty", DISTINCT, None)
    convert_letter_json(str(raw), str(tmp_path / "d"), "Beauty")
    _, counts, _ = load("Beauty", tmp_path / "d")
    assert counts == (8, 6, 40)


def test_raw_amazon2014_beauty(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(raw / "reviews_Beauty_5.json.gz", [json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t})
                                                   for u, i, t in timed(DISTINCT)])  # fmt: skip
    write_lines(raw / "meta_Beauty.json.gz",  # Python dict literals, as the 2014 metadata are
                [repr({"asin": i, "title": t["name"], "categories": [["Beauty", t["city"]]]}) for i, t in TEXT.items()])
    stats = convert_amazon2014(str(raw), str(tmp_path / "d"), "Beauty", "Beauty")
    config, counts, train = load("Beauty", tmp_path / "d")
    assert counts == counts_of(DISTINCT) == (stats.n_users, stats.n_items, stats.n_interactions)
    titles, categories = item_texts(train, config["text_fields"])
    assert sorted(titles[1:]) == [f"Shop {k}" for k in range(6)] and set(categories[1:]) == {"Beauty, Tucson"}


def test_raw_amazon2018_instruments(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(raw / "Musical_Instruments.csv", [f"{i},{u},5.0,{t}" for u, i, t in timed(DISTINCT)])
    write_lines(raw / "meta_Musical_Instruments.json.gz", [
        json.dumps({"asin": i, "title": t["name"], "description": [t["categories"]], "brand": "B",
                    "category": ["Music"]}) for i, t in TEXT.items()])  # fmt: skip
    convert_amazon2018(str(raw), str(tmp_path / "d"), "Instruments", "Musical_Instruments")
    config, counts, train = load("Instruments", tmp_path / "d")
    assert counts == counts_of(DISTINCT)
    titles, descriptions = item_texts(train, config["text_fields"])
    assert sorted(descriptions[1:]) == [f"Food, Kind {k}" for k in range(6)]


def raw_yelp(folder, sequences):
    folder.mkdir()
    write_lines(folder / "yelp_academic_dataset_review.json", [
        json.dumps({"review_id": f"r{n}", "user_id": u, "business_id": i, "stars": 4,
                    "date": f"2019-{1 + n // 28:02d}-{1 + n % 28:02d} 12:00:00"})
        for n, (u, i, _) in enumerate(timed(sequences))])  # fmt: skip
    write_lines(folder / "yelp_academic_dataset_business.json",
                [json.dumps({"business_id": i, **t}) for i, t in TEXT.items()])
    return folder


def test_raw_yelp_keeps_repeats_and_matches_letter_json_columns(tmp_path):
    raw = raw_yelp(tmp_path / "raw", REPEATS)
    stats = convert_yelp(str(raw), str(tmp_path / "d"), "Yelp", start_date="2019-01-01", end_date="2019-12-31")
    assert (stats.n_users, stats.n_items, stats.n_interactions) == counts_of(REPEATS)
    config, counts, train = load("Yelp", tmp_path / "d")
    assert counts == counts_of(REPEATS)
    titles, descriptions = item_texts(train, config["text_fields"])  # the same columns as LETTER's json
    assert sorted(titles[1:]) == [f"Shop {k}" for k in range(6)]
    assert sorted(descriptions[1:]) == [f"Food, Kind {k}" for k in range(6)]
    # LC-Rec's rule on request: the first of repeated pairs, then the 5-core drops u8 (4 distinct)
    first = convert_yelp(str(raw), str(tmp_path / "d"), "Yelp1", repeats="first")
    assert (first.n_users, first.n_items, first.n_interactions) == (8, 6, 40)
    from recbole_letter.data.__main__ import main  # the same from the command line

    assert main(["convert", "--format=yelp", f"--input={raw}", f"--output_dir={tmp_path / 'd'}", "--name=Yelp2",
                 "--repeats=first"]) == 0  # fmt: skip
    assert (tmp_path / "d" / "Yelp2" / "Yelp2.inter").read_text().count("\n") == 1 + 40


def test_build_sequences_repeats_option():
    import pandas as pd

    rows = pd.DataFrame(timed(REPEATS), columns=["user", "item", "time"])
    kept, _, _ = build_sequences(rows, kcore=5, repeats="keep")
    first, _, _ = build_sequences(rows, kcore=5, repeats="first")
    assert (len(kept), kept["user_id"].nunique()) == (46, 9)
    assert (len(first), first["user_id"].nunique()) == (40, 8)
    from recbole_letter.data import ConversionError

    with pytest.raises(ConversionError, match="repeats must be 'first' or 'keep', got 'all'"):
        build_sequences(rows, repeats="all")


@pytest.mark.parametrize("name, expected", [("Beauty", (22363, 12101, 198502)), ("Instruments", (24772, 9922, 206153))])
def test_shared_data_loads_with_the_papers_statistics(name, expected):
    """The real atomic files, when ../shared/data is here: the paper's counts exactly (Table 1 sources)."""
    if not os.path.isfile(os.path.join(SHARED, name, f"{name}.inter")):
        pytest.skip("../shared/data not here")
    from recbole.data import create_dataset

    config = quick_start.build_config("SASRec", name, config_dict={"data_path": SHARED, "state": "WARNING"})
    with recording_filters() as steps:
        dataset = create_dataset(config)
    assert loaded_counts(dataset) == expected
    assert all(before == after for _, before, after in steps) and len(steps) == 5
    # the release's codes pass every check of the codes-file loader (4 levels of 256 codes)
    from recbole_letter.tokenizer.item_codes import ItemCodes

    released = os.path.join(SHARED, name, "raw", f"{name}.index.json")
    codes = ItemCodes.from_index_json(released, dataset, code_limit=256)
    assert codes.n_items == expected[1] + 1 and codes.n_levels == 4 and max(codes.codebook_sizes) <= 256
    # items of identical text share a code there (LETTER_SPEC: 25 on Instruments, 13 on Beauty besides their
    # twins); each moves to a free last-level code, so the generators keep the release's 4 tokens per item
    separated, moved = codes.separate("free_last_code")
    assert moved == {"Beauty": 13, "Instruments": 25}[name] and separated.n_levels == 4
    assert separated.collision_rate() == 0.0 and separated.codebook_sizes == codes.codebook_sizes
    assert (separated.codes != codes.codes).any(axis=1).sum() == moved


# ---- what the filters removed -------------------------------------------------------------------
class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage()))


def test_filter_report_counts_each_filter_and_warns(tmp_path):
    from recbole.data import create_dataset

    raw = letter_json(tmp_path / "raw", "Yelp", REPEATS, lambda t: {"title": t["name"], "description": t["categories"]})
    convert_letter_json(str(raw), str(tmp_path / "d"), "Yelp")
    logger = logging.getLogger("test_filter_report")
    logger.setLevel(logging.INFO)
    lines = Lines()
    logger.addHandler(lines)
    # RecBole's old defaults on Yelp (overall.yaml): first of repeats, then 5-core
    config = quick_start.build_config("SASRec", "Yelp", config_dict={
        "data_path": str(tmp_path / "d"), "state": "WARNING", "rm_dup_inter": "first",
        "user_inter_num_interval": "[5,inf)", "item_inter_num_interval": "[5,inf)"})  # fmt: skip
    with recording_filters() as steps:
        dataset = create_dataset(config)
    report = log_filter_report(config, dataset, steps, logger)
    messages = [m for _, m in lines.records]
    assert report["read"] == {"users": 9, "items": 6, "interactions": 46}
    assert report["kept"] == {"users": 8, "items": 6, "interactions": 40}
    assert "data filter rm_dup_inter=first: removed 2 interactions (4.35 %), 0 users, 0 items" in messages
    assert ("data filter user_inter_num_interval=[5,inf), item_inter_num_interval=[5,inf): removed 4 interactions "
            "(8.70 %), 1 users, 0 items") in messages  # fmt: skip
    assert len([m for m in messages if m.startswith("data filter ")]) == 5  # one line per filter
    warnings = [m for level, m in lines.records if level == "WARNING"]
    assert len(warnings) == 1 and "removed 13.04 % of the interactions" in warnings[0]
    assert "rm_dup_inter=first" in warnings[0] and "rm_dup_inter: ~" in warnings[0]

    # the shipped Yelp.yaml: nothing removed, no warning
    lines.records.clear()
    config = quick_start.build_config("SASRec", "Yelp", config_dict={"data_path": str(tmp_path / "d"),
                                                                     "state": "WARNING"})
    with recording_filters() as steps:
        dataset = create_dataset(config)
    assert log_filter_report(config, dataset, steps, logger)["removed_fraction"] == 0.0
    assert not [m for level, m in lines.records if level == "WARNING"]
    # an item of the .item file without any interaction joins the ranked catalogue: said, not silent
    item_file = tmp_path / "d" / "Yelp" / "Yelp.item"
    item_file.write_text(item_file.read_text() + "99\tNew shop\tFood\n")
    lines.records.clear()
    with recording_filters() as steps:
        dataset = create_dataset(config)
    assert log_filter_report(config, dataset, steps, logger)["catalogue_items"] == 7
    assert [m for level, m in lines.records if level == "WARNING"] == [
        "data Yelp: 1 items of the catalogue (7) have no interaction (they come from Yelp.item only); "
        "they are ranked but never a target"]
    # the wrappers are gone after the block: the methods of before it again (compat's stable-sort one here)
    from recbole.data.dataset import Dataset

    from recbole_letter import compat

    assert Dataset._remove_duplication is compat._remove_duplication
    assert Dataset._filter_by_inter_num.__qualname__ == "Dataset._filter_by_inter_num"
    assert not hasattr(Dataset._remove_duplication, "__wrapped__")


def test_default_ml100k_statistics_unchanged():
    """ml-100k (inside recbole) keeps RecBole's 5-core from overall.yaml: 943 / 1,349 / 99,287, as before."""
    from recbole.data import create_dataset

    config = quick_start.build_config("SASRec", "ml-100k", config_dict={"state": "WARNING"})
    assert check_atomic_files_rows(config) == {"inter": 100000, "item": 1682}
    with recording_filters() as steps:
        dataset = create_dataset(config)
    report = log_filter_report(config, dataset, steps, logging.getLogger("test_ml100k"))
    assert report["read"] == {"users": 943, "items": 1682, "interactions": 100000}
    assert report["kept"] == {"users": 943, "items": 1349, "interactions": 99287}


def test_interactions_at_one_time_keep_the_files_order_on_every_cpu(tmp_path):
    """``rm_dup_inter`` (overall.yaml: ``first``) sorts by time before dropping repeated pairs; ties keep the
    file's order (compat: a stable sort), so leave-one-out holds out the same interactions on every CPU (a
    quicksort's tie order follows numpy's SIMD kernel: ml-100k's split differed between AVX2 and older ones)."""
    import random

    from recbole.data import create_dataset

    rng = random.Random(0)
    rows = [(f"u{u}", f"i{rng.randrange(300)}", 1000 + 10 * rng.randrange(4)) for u in range(40) for _ in range(50)]
    rng.shuffle(rows)
    rows.append(rows[0])  # a repeated (user, item) pair at the same time: the first row of the two stays
    (tmp_path / "ties").mkdir()
    write_lines(tmp_path / "ties" / "ties.inter", [HEADER] + [f"{u}\t{i}\t{t}" for u, i, t in rows])
    config = quick_start.build_config("SASRec", "ties", config_dict={
        "data_path": str(tmp_path), "state": "WARNING", "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": None, "item_inter_num_interval": None})
    assert config["rm_dup_inter"] == "first"
    dataset = create_dataset(config)
    inter = dataset.inter_feat
    users = dataset.field2id_token["user_id"][inter["user_id"].to_numpy()]
    items = dataset.field2id_token["item_id"][inter["item_id"].to_numpy()]
    loaded = list(zip(users, items, inter["timestamp"].to_numpy()))
    in_time_order = sorted(rows, key=lambda row: row[2])  # Python's sort is stable: ties in the file's order
    kept = {}
    for u, i, t in in_time_order:  # the first of each repeated pair
        kept.setdefault((u, i), (u, i, t))
    assert [(u, i, float(t)) for u, i, t in loaded] == [(u, i, float(t)) for u, i, t in kept.values()]


# ---- bad atomic rows: one line naming the file and the line -------------------------------------
HEADER = "user_id:token\titem_id:token\ttimestamp:float"


@pytest.mark.parametrize("rows, message", [
    (["u1\ti1\t0", "u1\ti2"], r"x.inter:3: expected 3 fields, got 2"),  # RecBole: mean timestamp, silently
    (["u1\ti1\t0\t7"], r"x.inter:2: expected 3 fields, got 4"),
    (["u1\ti1\t"], r"x.inter:2: empty timestamp \(RecBole would fill or drop it\)"),
    (["u1\t\t0"], r"x.inter:2: empty item_id"),
    (["u1\ti1\tnoon"], r"x.inter:2: timestamp='noon' is not a number"),
    (["u1\ti1\tnan"], r"x.inter:2: timestamp is NaN"),
    (['u1\t"i1\t0'], r"x.inter:2: field 'item_id' starts with '\"'"),
])  # fmt: skip
def test_bad_rows_one_line_each(tmp_path, rows, message):
    path = tmp_path / "x.inter"
    path.write_text("\n".join([HEADER] + rows) + "\n")
    with pytest.raises(AtomicFileError, match=message) as error:
        check_file(str(path))
    assert "\n" not in str(error.value)


def test_bad_headers_and_encoding(tmp_path):
    path = tmp_path / "x.inter"
    for header, message in [("user_id\titem_id:token", r"x.inter:1: header field 'user_id' is not name:type"),
                            ("user_id:token\titem_id:tokn", r"header field 'item_id:tokn'"),
                            ("user_id:token\tuser_id:token", r"x.inter:1: header names 'user_id' twice"),
                            ("", r"x.inter:1: no header")]:  # fmt: skip
        path.write_text(header + "\nu\ti\n")
        with pytest.raises(AtomicFileError, match=message):
            check_file(str(path))
    path.write_bytes(HEADER.encode() + b"\nu1\ti1\t0\nu\xff\ti\t1\n")
    with pytest.raises(AtomicFileError, match=r"x.inter:3: not utf-8 text"):
        check_file(str(path))
    # a blank line and empty text are fine: pandas skips the one, an empty token_seq is a value
    path.write_text("item_id:token\ttitle:token_seq\ni1\t\n\ni2\tA b\n")
    assert check_file(str(path)) == 2


def test_prepare_stops_at_a_short_row(tmp_path):
    folder = tmp_path / "d" / "toy"
    folder.mkdir(parents=True)
    rows = [f"u{u}\ti{i}\t{t}" for u in range(3) for t, i in enumerate(range(u, u + 5))]
    rows[7] = rows[7].rsplit("\t", 1)[0]  # a short row: RecBole would give it the mean timestamp
    (folder / "toy.inter").write_text("\n".join([HEADER] + rows) + "\n")
    with pytest.raises(AtomicFileError, match=r"toy.inter:9: expected 3 fields, got 2$"):
        load("toy", tmp_path / "d", user_inter_num_interval=None, item_inter_num_interval=None)
    # columns RecBole does not load may be empty; loaded ones may not
    (folder / "toy.inter").write_text("\n".join([HEADER + "\trating:float"] + [r + "\t" for r in rows[:7]]) + "\n")
    config = quick_start.build_config("SASRec", "toy", config_dict={"data_path": str(tmp_path / "d"),
                                                                    "state": "WARNING"})
    assert check_atomic_files_rows(config) == {"inter": 7}


# ---- empty item text ----------------------------------------------------------------------------
def test_items_without_text_are_an_error_or_a_counted_warning(tmp_path):
    from recbole_letter.tokenizer.text_encoder import check_item_texts, item_semantic_embeddings

    def fields(t):
        if t["name"] == "Shop 5":
            return {"title": "", "description": ""}  # no text at all
        return {"title": t["name"], "description": "" if t["name"] == "Shop 4" else t["categories"]}

    raw = letter_json(tmp_path / "raw", "Yelp", REPEATS, fields)
    convert_letter_json(str(raw), str(tmp_path / "d"), "Yelp")
    _, _, train = load("Yelp", tmp_path / "d")
    config = {"text_fields": ["title", "description"], "allow_empty_text": False, "encode_fields_separately": True,
              "text_encoder": str(tmp_path / "no-such-encoder")}  # fmt: skip
    # the error comes before any encoder is looked for; it names the count and the item (raw id 5 = i5)
    with pytest.raises(ValueError, match=r"^1 of 6 items have no text in text_fields \['title', 'description'\] "
                                         r"\(item ids 5\): .*allow_empty_text: True"):  # fmt: skip
        item_semantic_embeddings(config, train)
    with pytest.raises(FileNotFoundError, match="no-such-encoder"):  # allowed: on to the encoder
        item_semantic_embeddings({**config, "allow_empty_text": True}, train)
    with pytest.raises(FileNotFoundError, match="no-such-encoder"):  # checked by the caller (the tokenizer stage)
        item_semantic_embeddings(config, train, check_texts=False)
    logger = logging.getLogger("test_empty_text")
    lines = Lines()
    logger.addHandler(lines)
    texts = item_texts(train, ["title", "description"])
    assert check_item_texts(train, ["title", "description"], texts, allow_empty=True, logger=logger) == 1
    assert [level for level, _ in lines.records] == ["WARNING"] * 3
    assert "1 of 6 items have no text" in lines.records[0][1] and "encoded as empty text" in lines.records[0][1]
    assert lines.records[1][1].startswith("text field 'title' is empty for 1 of 6 items")
    assert lines.records[2][1].startswith("text field 'description' is empty for 2 of 6 items")
    # joined fields (encode_fields_separately False): only the items without any text matter
    lines.records.clear()
    check_item_texts(train, ["title", "description"], texts, allow_empty=True, separately=False, logger=logger)
    assert len(lines.records) == 1


@pytest.mark.parametrize("value", ["NA", "null", "None", "nan", "N/A", "NaN", "#N/A", "NULL", "<NA>", "n/a"])
def test_pandas_missing_value_texts_are_errors(tmp_path, value):
    # before: pandas read these as NaN, and RecBole dropped the row (an id) or filled it (a float) silently
    path = tmp_path / "x.inter"
    for row, name in ((f"{value}\ti2\t1", "user_id"), (f"u1\t{value}\t1", "item_id"), (f"u1\ti2\t{value}", "timestamp")):
        path.write_text("\n".join([HEADER, "u1\ti1\t0", row]) + "\n")
        with pytest.raises(AtomicFileError, match=rf"x.inter:3: ({name}={value!r}, which RecBole's reader \(pandas\) "
                                                  rf"takes as a missing value|{name} is NaN|{name}='{value}' is not a)"):
            check_file(str(path))


def test_a_line_of_separators_is_a_row_not_a_blank_line(tmp_path):
    # before: skipped as blank, while pandas reads it as a row of NaN (RecBole then drops or fills it)
    path = tmp_path / "x.inter"
    path.write_text("\n".join([HEADER, "u1\ti1\t0", "\t\t", "u1\ti2\t1"]) + "\n")
    with pytest.raises(AtomicFileError, match=r"x.inter:3: empty user_id"):
        check_file(str(path))
    path.write_text("\n".join([HEADER, "u1\ti1\t0", "   ", "", "u1\ti2\t1"]) + "\n")  # blank lines pandas skips
    assert check_file(str(path)) == 2


def test_an_item_or_user_id_twice_is_an_error(tmp_path):
    # before: RecBole's drop_duplicates(keep="first") dropped the second row of an id silently
    folder = tmp_path / "d" / "toy"
    folder.mkdir(parents=True)
    rows = [f"u{u}\ti{i}\t{t}" for u in range(3) for t, i in enumerate(range(u, u + 5))]
    (folder / "toy.inter").write_text("\n".join([HEADER] + rows) + "\n")
    (folder / "toy.item").write_text("item_id:token\ttitle:token_seq\ni1\tA\ni2\tB\ni1\tC\n")
    (folder / "toy.user").write_text("user_id:token\tage:float\nu0\t1\nu1\t2\nu2\t3\nu1\t4\n")
    config = quick_start.build_config("SASRec", "toy", config_dict={
        "data_path": str(tmp_path / "d"), "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title"]}})
    with pytest.raises(AtomicFileError, match=r"toy.item:4: item i1 appears twice \(first at line 2"):
        check_atomic_files_rows(config)
    (folder / "toy.item").write_text("item_id:token\ttitle:token_seq\ni1\tA\ni2\tB\n")
    assert check_atomic_files_rows(config) == {"inter": 15, "item": 2}
    config["load_col"] = {**config["load_col"], "user": ["user_id", "age"]}
    with pytest.raises(AtomicFileError, match=r"toy.user:5: user u1 appears twice \(first at line 3"):
        check_atomic_files_rows(config)


def test_empty_text_check_runs_on_a_cache_hit(tmp_path):
    # before: check_item_texts ran only when the semantic embeddings were computed; cached codes or embeddings
    # (made with allow_empty_text: True, which is not part of the cache key) skipped it
    import numpy as np

    from recbole_letter.tokenizer import cache
    from recbole_letter.tokenizer.trainer import cache_keys, cache_root, load_or_train_item_codes

    def fields(t):
        return {"title": "" if t["name"] == "Shop 5" else t["name"], "description": ""}

    raw = letter_json(tmp_path / "raw", "Yelp", REPEATS, fields)
    convert_letter_json(str(raw), str(tmp_path / "d"), "Yelp")
    config, _, train = load("Yelp", tmp_path / "d")
    config = quick_start.build_config("LETTER_TIGER", "Yelp", config_dict={
        "data_path": str(tmp_path / "d"), "state": "WARNING", "checkpoint_dir": str(tmp_path / "saved"),
        "text_fields": ["title", "description"], "allow_empty_text": False})
    keys = cache_keys(config, train)
    codes = np.arange(train.item_num * 2).reshape(train.item_num, 2)
    cache.save_arrays(os.path.join(cache_root(config), keys["tokenizer"], "codes.npz"), final=codes,
                      final_codebook_sizes=np.array([train.item_num * 2, train.item_num * 2]))
    with pytest.raises(ValueError, match=r"1 of 6 items have no text in text_fields"):
        load_or_train_item_codes(config, train)
    config["allow_empty_text"] = True  # the same cache, now allowed: read back
    assert load_or_train_item_codes(config, train).codes.shape[0] == train.item_num
