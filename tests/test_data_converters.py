"""Data converters: tiny raw files built here, outputs checked row by row."""

import gzip
import json
import os

import pytest

import recbole_letter  # noqa: F401  (RecBole compat fixes before recbole is used)
from recbole_letter.data import (
    ConversionError,
    clean_text,
    convert,
    convert_amazon2014,
    convert_amazon2018,
    convert_letter_json,
    convert_yelp,
)
from recbole_letter.data import atomic_files
from recbole_letter.data.__main__ import main

BEAUTY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "Beauty")


def read_rows(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def write_lines(path, lines):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def json_lines(records):
    return [json.dumps(r) for r in records]


# ---- text --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("double &amp;quot;escaped&amp;quot;", "double ''escaped''"),
        ('say "hi"\tthere\nnow', "say ''hi'' there now"),
        ("  a   b\r\n\xa0c  ", "a b c"),
        ("line<br/>break <b>bold</b> 3 < 5", "line break bold 3 < 5"),
        ("x&nbsp;y", "x y"),
        (None, ""),
        (12, "12"),
        (["Beauty", ["Makeup", "Beauty"], "", "Nails"], "Beauty, Makeup, Nails"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


# ---- LETTER / LC-Rec JSON ----------------------------------------------------------------------
def make_letter_json(folder, with_item=True, with_index=True):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "Toy.inter.json"), "w") as f:
        json.dump({"0": [2, 0, 1], "1": [1, 3], "2": []}, f, indent=4)
    if with_item:
        with open(os.path.join(folder, "Toy.item.json"), "w") as f:
            json.dump(
                {
                    "0": {"title": 'Lip "Gloss" &amp; Balm', "description": "Soft\tand\nshiny", "brand": "Acme"},
                    "1": {"title": "Nail Polish", "categories": ["Beauty", "Nails"]},
                    "2": {"title": "Brush", "sales_rank": 3},
                },
                f,
            )
    if with_index:
        codes = {str(i): [f"<a_{i}>", f"<b_{i % 2}>"] for i in range(4)}
        with open(os.path.join(folder, "Toy.index.json"), "w") as f:
            json.dump(codes, f)


def test_letter_json_rows(tmp_path):
    make_letter_json(tmp_path / "raw")
    stats = convert_letter_json(str(tmp_path / "raw"), str(tmp_path / "dataset"), "toy")
    assert (stats.n_users, stats.n_items, stats.n_interactions) == (2, 4, 5)
    out = tmp_path / "dataset" / "toy"
    assert sorted(os.listdir(out)) == ["toy.index.json", "toy.inter", "toy.item"]
    assert read_rows(out / "toy.inter") == [
        ["user_id:token", "item_id:token", "timestamp:float"],
        ["0", "2", "0"],
        ["0", "0", "1"],
        ["0", "1", "2"],
        ["1", "1", "0"],
        ["1", "3", "1"],
    ]
    # items in order of first appearance; text fields = every text field seen (sales_rank is no text);
    # item 3 has no entry in item.json: empty text
    assert read_rows(out / "toy.item") == [
        ["item_id:token", "title:token_seq", "description:token_seq", "brand:token_seq", "categories:token_seq"],
        ["2", "Brush", "", "", ""],
        ["0", "Lip ''Gloss'' & Balm", "Soft and shiny", "Acme", ""],
        ["1", "Nail Polish", "", "", "Beauty, Nails"],
        ["3", "", "", "", ""],
    ]
    with open(tmp_path / "raw" / "Toy.index.json") as a, open(out / "toy.index.json") as b:
        assert a.read() == b.read()


def test_letter_json_text_fields_and_no_item_file(tmp_path):
    make_letter_json(tmp_path / "raw")
    convert_letter_json(str(tmp_path / "raw" / "Toy.inter.json"), str(tmp_path), "a", text_fields=["title"])
    assert read_rows(tmp_path / "a" / "a.item")[:2] == [["item_id:token", "title:token_seq"], ["2", "Brush"]]
    make_letter_json(tmp_path / "bare", with_item=False, with_index=False)
    convert_letter_json(str(tmp_path / "bare"), str(tmp_path), "b")
    assert sorted(os.listdir(tmp_path / "b")) == ["b.inter", "b.item"]
    assert read_rows(tmp_path / "b" / "b.item") == [["item_id:token"], ["2"], ["0"], ["1"], ["3"]]


def test_letter_json_errors(tmp_path):
    raw = tmp_path / "raw"
    make_letter_json(raw)
    out = str(tmp_path / "dataset")
    with open(raw / "Toy.index.json", "w") as f:
        json.dump({"0": ["<a_1>"]}, f)
    with pytest.raises(ConversionError, match=r"Toy.index.json: 3 items have no codes"):
        convert_letter_json(str(raw), out, "toy")
    with open(raw / "Toy.inter.json", "w") as f:
        f.write('{\n  "0": [1, 2],\n  "1": [3 4]\n}\n')
    with pytest.raises(ConversionError, match=r"Toy.inter.json:3: malformed JSON"):
        convert_letter_json(str(raw), out, "toy")
    with open(raw / "Toy.inter.json", "w") as f:
        pass
    with pytest.raises(ConversionError, match=r"empty file: .*Toy.inter.json"):
        convert_letter_json(str(raw), out, "toy")
    with pytest.raises(ConversionError, match=r"missing LETTER interactions.*nothing.inter.json not found"):
        convert_letter_json(str(raw / "nothing.inter.json"), out, "toy")
    with pytest.raises(ConversionError, match=r"expected exactly one \*.inter.json"):
        convert_letter_json(str(tmp_path), out, "toy")
    assert not os.path.exists(out) or os.listdir(out) == []  # nothing written by any failure


def test_existing_output_refused_then_overwritten(tmp_path):
    make_letter_json(tmp_path / "raw")
    out = tmp_path / "dataset"
    (out / "toy").mkdir(parents=True)
    (out / "toy" / "stale.txt").write_text("old")
    with pytest.raises(ConversionError, match=r"output folder .*toy exists; pass --overwrite"):
        convert_letter_json(str(tmp_path / "raw"), str(out), "toy")
    assert os.listdir(out / "toy") == ["stale.txt"]
    convert_letter_json(str(tmp_path / "raw"), str(out), "toy", overwrite=True)
    assert sorted(os.listdir(out / "toy")) == ["toy.index.json", "toy.inter", "toy.item"]
    assert sorted(os.listdir(out)) == ["toy"]  # no staging or old folder left behind


# ---- atomicity ---------------------------------------------------------------------------------
def test_failure_mid_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    make_letter_json(tmp_path / "raw")
    out = tmp_path / "dataset"
    convert_letter_json(str(tmp_path / "raw"), str(out), "toy")
    before = {p: (out / "toy" / p).read_text() for p in os.listdir(out / "toy")}

    written = []
    original_write_table = atomic_files.DatasetWriter.write_table

    def write_table(self, suffix, header, rows, n_rows=None):
        if suffix == ".item":  # .inter is complete by now; crash half-way through .item
            def rows_then_crash():
                for i, row in enumerate(rows):
                    if i == 2:
                        raise RuntimeError("disk full")
                    yield row
            written.append(suffix)
            return original_write_table(self, suffix, header, rows_then_crash(), n_rows)
        return original_write_table(self, suffix, header, rows, n_rows)

    monkeypatch.setattr(atomic_files.DatasetWriter, "write_table", write_table)
    for name, overwrite in (("fresh", False), ("toy", True)):
        with pytest.raises(RuntimeError, match="disk full"):
            convert_letter_json(str(tmp_path / "raw"), str(out), name, overwrite=overwrite)
    assert written == [".item", ".item"]
    assert sorted(os.listdir(out)) == ["toy"]  # no 'fresh', no staging folder, no temp file
    assert {p: (out / "toy" / p).read_text() for p in os.listdir(out / "toy")} == before


def test_atomic_open_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("old\n")
    with pytest.raises(ValueError):
        with atomic_files.atomic_open(str(path)) as f:
            f.write("half")
            raise ValueError("crash")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["x.inter"]


# ---- Amazon ------------------------------------------------------------------------------------
# u2 comes first in the file, so it becomes user 0; X has no metadata; u1 repeats A (t=40 listed
# before t=30: the first in *time* is kept); D is seen once, which with kcore=2 removes D, then u3
# (left with C only), then C (left with u1 only): three rounds of the iterative 2-core; u4 keeps
# only A after X is dropped, so u4 goes in the first round.
AMAZON_RATINGS = [
    ("A", "u2", 5.0, 5), ("B", "u2", 4.0, 6),
    ("A", "u1", 5.0, 40), ("B", "u1", 3.0, 10), ("X", "u1", 1.0, 5), ("A", "u1", 2.0, 30), ("C", "u1", 4.0, 20),
    ("C", "u3", 4.0, 7), ("D", "u3", 4.0, 1),
    ("X", "u4", 4.0, 1), ("A", "u4", 4.0, 2),
]
EXPECTED_INTER = [
    ["user_id:token", "item_id:token", "timestamp:float"],
    ["0", "0", "5"], ["0", "1", "6"],
    ["1", "1", "10"], ["1", "0", "30"],
]
AMAZON_ITEM_HEADER = ["item_id:token", "asin:token", "title:token_seq", "description:token_seq",
                      "brand:token_seq", "categories:token_seq"]


def amazon2018_meta():
    return [
        {"asin": "A", "title": 'Lip "Gloss" &amp; Balm', "description": ["Soft<br>and", "shiny\n"],
         "brand": "Acme", "category": ["Beauty", "Makeup", "Lips"]},
        {"asin": "B", "title": "Nail Polish"},
        {"asin": "C", "title": "Comb"}, {"asin": "D", "title": "Dryer"},
        {"asin": "A", "title": "a later duplicate record is ignored"},
    ]


def test_amazon2018_ratings_csv(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(str(raw / "Toys.csv"), [f"{i},{u},{r},{t}" for i, u, r, t in AMAZON_RATINGS])
    write_lines(str(raw / "meta_Toys.json.gz"), json_lines(amazon2018_meta()))
    stats = convert_amazon2018(str(raw), str(tmp_path / "dataset"), "toys", "Toys", kcore=2)
    assert (stats.n_users, stats.n_items, stats.n_interactions) == (2, 2, 4)
    out = tmp_path / "dataset" / "toys"
    assert read_rows(out / "toys.inter") == EXPECTED_INTER
    assert read_rows(out / "toys.item") == [
        AMAZON_ITEM_HEADER,
        ["0", "A", "Lip ''Gloss'' & Balm", "Soft and shiny", "Acme", "Beauty, Makeup, Lips"],
        ["1", "B", "Nail Polish", "", "", ""],
    ]
    assert read_rows(out / "toys.user2id") == [["raw_user_id:token", "user_id:token"], ["u2", "0"], ["u1", "1"]]

    convert_amazon2018(str(raw), str(tmp_path / "dataset"), "toys_pos", "Toys", kcore=2, timestamp="position")
    assert [r[2] for r in read_rows(tmp_path / "dataset" / "toys_pos" / "toys_pos.inter")[1:]] == ["0", "1", "0", "1"]

    # k=1 keeps everything that has metadata: C and D come back, X never does
    convert_amazon2018(str(raw), str(tmp_path / "dataset"), "toys_k1", "Toys", kcore=1)
    items = [r[1] for r in read_rows(tmp_path / "dataset" / "toys_k1" / "toys_k1.item")[1:]]
    assert items == ["A", "B", "C", "D"]


def test_amazon2018_reviews_and_choice(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    reviews = [{"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t} for i, u, r, t in AMAZON_RATINGS]
    write_lines(str(raw / "Toys_5.json.gz"), json_lines(reviews))
    write_lines(str(raw / "meta_Toys.json.gz"), json_lines(amazon2018_meta()))
    convert_amazon2018(str(raw), str(tmp_path / "d"), "toys", "Toys", kcore=2)
    assert read_rows(tmp_path / "d" / "toys" / "toys.inter") == EXPECTED_INTER
    write_lines(str(raw / "Toys.csv"), ["A,u1,5.0,1"])
    with pytest.raises(ConversionError, match=r"both Toys.csv and Toys_5.json\(.gz\).*--interactions=csv\|reviews"):
        convert_amazon2018(str(raw), str(tmp_path / "d"), "again", "Toys", kcore=2)
    convert_amazon2018(str(raw), str(tmp_path / "d"), "again", "Toys", interactions="reviews", kcore=2)
    assert read_rows(tmp_path / "d" / "again" / "again.inter") == EXPECTED_INTER


def test_amazon2014_python_literal_meta(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    reviews = [{"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t} for i, u, r, t in AMAZON_RATINGS]
    write_lines(str(raw / "reviews_Beauty_5.json.gz"), json_lines(reviews))
    meta = [
        "{'asin': 'A', 'title': 'Lip \"Gloss\" &amp; Balm', 'description': 'Soft\\nand shiny', "
        "'categories': [['Beauty', 'Makeup'], ['Beauty', 'Lips']], 'salesRank': {'Beauty': 12}}",
        "{'asin': 'B', 'title': 'Nail Polish', 'brand': 'OPI'}",
        "{'asin': 'C'}", "{'asin': 'D'}",
    ]
    write_lines(str(raw / "meta_Beauty.json.gz"), meta)
    convert_amazon2014(str(raw), str(tmp_path / "d"), "beauty", "Beauty", kcore=2)
    out = tmp_path / "d" / "beauty"
    assert read_rows(out / "beauty.inter") == EXPECTED_INTER
    assert read_rows(out / "beauty.item") == [
        AMAZON_ITEM_HEADER,
        ["0", "A", "Lip ''Gloss'' & Balm", "Soft and shiny", "", "Beauty, Makeup, Lips"],
        ["1", "B", "Nail Polish", "", "OPI", ""],
    ]
    # code in a metadata line is refused, never run
    write_lines(str(raw / "meta_Beauty.json.gz"), meta[:2] + ["__import__('os').system('echo pwned')"])
    with pytest.raises(ConversionError, match=r"meta_Beauty.json.gz:3: malformed record"):
        convert_amazon2014(str(raw), str(tmp_path / "d"), "evil", "Beauty", kcore=2)


def test_amazon_bad_input_errors(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    out = str(tmp_path / "d")
    write_lines(str(raw / "meta_Toys.json.gz"), json_lines(amazon2018_meta()))
    write_lines(str(raw / "Toys.csv"), ["A,u1,5.0,1", "B,u1,5.0,2,extra", "C,u1,5.0,3"])
    with pytest.raises(ConversionError, match=r"Toys.csv:2: malformed line \(5 fields, expected 4\)"):
        convert_amazon2018(str(raw), out, "t", "Toys")
    write_lines(str(raw / "Toys.csv"), ["A,u1,5.0,1", "B,u1,5.0,2", "C,u1,5.0,yesterday"])
    with pytest.raises(ConversionError, match=r"Toys.csv:3: malformed line"):
        convert_amazon2018(str(raw), out, "t", "Toys")
    open(raw / "Toys.csv", "w").close()
    with pytest.raises(ConversionError, match=r"empty file: .*Toys.csv"):
        convert_amazon2018(str(raw), out, "t", "Toys")
    os.remove(raw / "Toys.csv")
    with pytest.raises(ConversionError, match=r"missing Amazon 2018 reviews: none of Toys_5.json.gz, Toys_5.json"):
        convert_amazon2018(str(raw), out, "t", "Toys")
    write_lines(str(raw / "Toys_5.json.gz"), ['{"reviewerID": "u1", "asin": "A", "unixReviewTime": 1}', '{"reviewerID": "u1",'])
    with pytest.raises(ConversionError, match=r"Toys_5.json.gz:2: malformed JSON"):
        convert_amazon2018(str(raw), out, "t", "Toys")
    write_lines(str(raw / "Toys_5.json.gz"), ['{"reviewerID": "u1", "unixReviewTime": 1}'])
    with pytest.raises(ConversionError, match=r"Toys_5.json.gz:1: missing field 'asin'"):
        convert_amazon2018(str(raw), out, "t", "Toys")
    write_lines(str(raw / "Toys_5.json.gz"), ['{"reviewerID": "u1", "asin": "A", "unixReviewTime": 1}'])
    with pytest.raises(ConversionError, match=r"no interactions left after 5-core filtering \(1 before\)"):
        convert_amazon2018(str(raw), out, "t", "Toys")
    assert not os.path.exists(out) or os.listdir(out) == []


# ---- Yelp --------------------------------------------------------------------------------------
def test_yelp_date_window_and_text(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    reviews = [
        ("ua", "b1", "2019-03-01 10:00:00"), ("ua", "b2", "2019-01-01 00:00:00"),
        ("ub", "b1", "2019-12-31 23:59:59"), ("ub", "b2", "2019-06-01 12:00:00"),
        ("ub", "b3", "2020-01-01 00:00:00"),  # outside the window: b3 and its text disappear
        ("uc", "b2", "2018-12-31 23:59:59"),  # outside too, so uc is gone before the 2-core
    ]
    write_lines(str(raw / "yelp_academic_dataset_review.json"),
                json_lines({"review_id": f"r{k}", "user_id": u, "business_id": b, "stars": 4, "date": d}
                           for k, (u, b, d) in enumerate(reviews)))
    write_lines(str(raw / "yelp_academic_dataset_business.json"), json_lines([
        {"business_id": "b1", "name": "Joe's &amp; Sons", "city": "Las Vegas", "categories": "Pizza, Restaurants"},
        {"business_id": "b2", "name": "Cafe\tDu Monde", "city": "New Orleans", "categories": None},
        {"business_id": "b3", "name": "Late", "city": "X", "categories": "Bars"},
    ]))
    stats = convert_yelp(str(raw), str(tmp_path / "d"), "yelp", start_date="2019-01-01", end_date="2019-12-31", kcore=2)
    assert (stats.n_users, stats.n_items, stats.n_interactions) == (2, 2, 4)
    out = tmp_path / "d" / "yelp"
    assert read_rows(out / "yelp.inter") == [
        ["user_id:token", "item_id:token", "timestamp:float"],
        ["0", "0", "1546300800"], ["0", "1", "1551434400"],  # ua: b2 (Jan 1) before b1 (Mar 1)
        ["1", "0", "1559390400"], ["1", "1", "1577836799"],  # ub: b2 (Jun 1) before b1 (Dec 31)
    ]
    assert read_rows(out / "yelp.item") == [
        # LETTER's Yelp.item.json names: title = business name, description = categories
        ["item_id:token", "business_id:token", "title:token_seq", "description:token_seq", "city:token_seq"],
        ["0", "b2", "Cafe Du Monde", "", "New Orleans"],
        ["1", "b1", "Joe's & Sons", "Pizza, Restaurants", "Las Vegas"],
    ]
    with pytest.raises(ConversionError, match=r"--end_date must be a date YYYY-MM-DD, got '2019/12/31'"):
        convert_yelp(str(raw), str(tmp_path / "d"), "y2", end_date="2019/12/31")
    with pytest.raises(ConversionError, match=r"no review between 2021-01-01 and the end"):
        convert_yelp(str(raw), str(tmp_path / "d"), "y2", start_date="2021-01-01")


# ---- RecBole reads what we write ---------------------------------------------------------------
def test_recbole_loads_converted_text(tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    from recbole_letter.tokenizer.text_encoder import item_texts

    raw = tmp_path / "raw"
    raw.mkdir()
    write_lines(str(raw / "Toys.csv"), [f"{i},{u},{r},{t}" for i, u, r, t in AMAZON_RATINGS])
    write_lines(str(raw / "meta_Toys.json.gz"), json_lines(amazon2018_meta()))
    convert_amazon2018(str(raw), str(tmp_path / "d"), "toys", "Toys", kcore=2)
    config = Config(model="Pop", dataset="toys", config_dict={
        "data_path": str(tmp_path / "d"), "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                                                       "item": ["item_id", "title", "description", "categories"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "show_progress": False, "state": "ERROR",
    })
    dataset = create_dataset(config)
    assert (dataset.user_num, dataset.item_num, dataset.inter_num) == (3, 3, 4)  # + padding ids
    dataset.build()  # item features become an Interaction, as the tokenizer sees them
    titles, descriptions, categories = item_texts(dataset, ["title", "description", "categories"])
    tokens = dataset.field2id_token["item_id"]
    by_raw = {tokens[i]: (titles[i], descriptions[i], categories[i]) for i in range(1, dataset.item_num)}
    assert (titles[0], descriptions[0], categories[0]) == ("", "", "")
    # the cleaned text comes back exactly
    assert by_raw == {"0": ("Lip ''Gloss'' & Balm", "Soft and shiny", "Beauty, Makeup, Lips"), "1": ("Nail Polish", "", "")}
    with pytest.raises(ValueError, match="text field 'brand' is not loaded"):
        item_texts(dataset, ["title", "brand"])


# ---- command line ------------------------------------------------------------------------------
def test_cli(tmp_path, capsys):
    make_letter_json(tmp_path / "raw")
    args = ["convert", "--format=letter_json", f"--input={tmp_path / 'raw'}", f"--output_dir={tmp_path / 'd'}", "--name=toy"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: output folder") and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0
    assert main(args + ["--kcore=3"]) == 2
    assert capsys.readouterr().err == "error: --kcore does not apply to --format=letter_json\n"
    assert main(args + ["--repeats=first"]) == 2  # a JSON sequence is kept as the release has it
    assert capsys.readouterr().err == "error: --repeats does not apply to --format=letter_json\n"
    assert main(["convert", "--format=amazon2018", f"--input={tmp_path}", "--name=x"]) == 2
    assert "needs --category" in capsys.readouterr().err
    with pytest.raises(ConversionError, match=r"unknown format 'csv'; known: letter_json, amazon2018"):
        convert("csv", str(tmp_path), name="x")


# ---- the real Beauty data, when present --------------------------------------------------------
@pytest.mark.skipif(not os.path.isdir(os.path.join(BEAUTY, "raw")), reason="../shared/data/Beauty not here")
def test_beauty_letter_json_matches_shared_atomic_file(tmp_path):
    stats = convert_letter_json(os.path.join(BEAUTY, "raw"), str(tmp_path), "Beauty")
    assert (stats.n_users, stats.n_items, stats.n_interactions) == (22363, 12101, 198502)  # its README
    with open(tmp_path / "Beauty" / "Beauty.inter") as ours, open(os.path.join(BEAUTY, "Beauty.inter")) as shared:
        assert ours.read() == shared.read()
    assert os.path.getsize(tmp_path / "Beauty" / "Beauty.index.json") == os.path.getsize(
        os.path.join(BEAUTY, "raw", "Beauty.index.json"))
