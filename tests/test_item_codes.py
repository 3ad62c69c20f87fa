"""ItemCodes: collisions, the disambiguation level, atomic save/load, LETTER index.json mapping."""

import json

import numpy as np
import pytest

from recbole_letter import quick_start
from recbole_letter.tokenizer.item_codes import PAD_CODE, ItemCodes


def test_make_unique_adds_one_level_only_where_needed():
    codes = np.array([[-1, -1], [0, 1], [0, 1], [2, 3], [0, 1], [2, 3], [1, 1]])
    item_codes = ItemCodes(codes, [4, 4])
    assert item_codes.collision_rate() == pytest.approx(1 - 3 / 6)
    assert sorted(map(list, item_codes.collision_groups())) == [[1, 2, 4], [3, 5]]
    unique = item_codes.make_unique()
    assert unique.n_levels == 3 and unique.codebook_sizes == [4, 4, 3]
    assert unique.codes[:, 2].tolist() == [PAD_CODE, 0, 1, 0, 2, 1, 0]
    assert unique.collision_rate() == 0.0 and unique.make_unique() is unique
    with pytest.raises(ValueError, match="out of range"):
        ItemCodes(codes, [2, 4])


def test_shared_codes_take_the_smallest_free_last_level_code():
    # prefix (0,): item 1 keeps 1, items 2 and 4 take 0 and 2 (smallest free); prefix (2,): item 5 takes 0;
    # prefix (1,) uses every last code of 3 (items 6, 7, 8 and 9), so items 8 and 9 stay shared
    codes = np.array([[-1, -1], [0, 1], [0, 1], [2, 1], [0, 1], [2, 1], [1, 0], [1, 1], [1, 2], [1, 2]])
    item_codes = ItemCodes(codes, [3, 3])
    separated, moved = item_codes.separate("free_last_code")
    assert moved == 3 and separated.n_levels == 3  # the group left under a full prefix: a disambiguation level
    assert separated.codes[:, :2].tolist() == [[-1, -1], [0, 1], [0, 0], [2, 1], [0, 2], [2, 0], [1, 0], [1, 1], [1, 2], [1, 2]]
    assert separated.codes[:, 2].tolist() == [PAD_CODE, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert separated.collision_rate() == 0.0 and separated.codebook_sizes == [3, 3, 2]
    free, moved = ItemCodes(codes[:8], [3, 3]).separate()  # every group has a free code: the file's depth kept
    assert moved == 3 and free.n_levels == 2 and free.collision_rate() == 0.0
    extra, moved = item_codes.separate("extra_level")
    assert moved == 0 and np.array_equal(extra.codes, item_codes.make_unique().codes)
    unique = ItemCodes(codes[:2], [3, 3])
    assert unique.separate()[0].codes is unique.codes  # nothing shared: nothing changes
    with pytest.raises(ValueError, match="item_codes_collisions must be one of free_last_code, extra_level"):
        item_codes.separate("drop")


def test_codes_file_collisions_are_separated_and_reported(tiny_dataset, tmp_path, caplog):
    from recbole_letter.tokenizer import get_item_codes

    name, cfg = tiny_dataset
    _, _, train_data, _, _ = quick_start.prepare("SASRec", name, config_dict=cfg)
    dataset = train_data.dataset
    tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field][1:]]
    path = tmp_path / "shared.index.json"
    config = {"item_codes_file": str(path), "codebook_size": 256, "item_codes_collisions": "free_last_code"}

    def load(index, **overrides):
        path.write_text(json.dumps(index))
        caplog.clear()
        with caplog.at_level("WARNING"):
            return get_item_codes({**config, **overrides}, dataset)

    # unique codes (16 last-level codes under each prefix), then two items take their neighbour's code:
    # last-level codes 1 and 3 of prefix 0 fall free, and the two twins that move take them
    index = {tok: [f"<a_{k // 16}>", f"<b_{k % 16}>"] for k, tok in enumerate(tokens)}
    index[tokens[1]], index[tokens[3]] = index[tokens[0]], index[tokens[2]]
    codes = load(index)
    assert codes.n_levels == 2 and codes.collision_rate() == 0.0
    assert "4 items share a full code with another item (2 groups)" in caplog.text
    assert "2 of them moved to the smallest last-level code free under their prefix; 2 tokens per item, as in the file" in caplog.text
    given = ItemCodes.from_index_json(path, dataset).codes
    moved = np.flatnonzero((codes.codes != given).any(axis=1))
    assert len(moved) == 2 and sorted(codes.codes[moved, 1]) == [1, 3] and (codes.codes[moved, 0] == 0).all()
    extra = load(index, item_codes_collisions="extra_level")  # the old way: one more level for every item
    assert extra.n_levels == 3 and np.array_equal(extra.codes[:, :2], given) and "none moved" in caplog.text

    # every last-level code of the prefix is taken (the codebook is the file's: 4 codes): a level for all items
    codes = load({tok: ["<a_0>", f"<b_{k % 4}>"] for k, tok in enumerate(tokens)})
    assert codes.n_levels == 3 and codes.collision_rate() == 0.0
    assert f"{len(tokens)} items share a full code with another item (4 groups)" in caplog.text
    assert "0 of them moved" in caplog.text and "a disambiguation level for all items (3 tokens per item)" in caplog.text


def test_save_load_round_trip(tmp_path):
    item_codes = ItemCodes(np.array([[-1, -1], [0, 1], [3, 2]]), [4, 4])
    item_codes.save(tmp_path / "codes.npz")
    loaded = ItemCodes.load(tmp_path / "codes.npz")
    assert np.array_equal(loaded.codes, item_codes.codes) and loaded.codebook_sizes == [4, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["codes.npz"]  # no temporary file left


def test_index_json_maps_raw_tokens_to_internal_ids(tiny_dataset, tmp_path):
    name, cfg = tiny_dataset
    _, _, train_data, _, _ = quick_start.prepare("SASRec", name, config_dict=cfg)
    dataset = train_data.dataset
    tokens = dataset.field2id_token[dataset.iid_field][1:]
    rng = np.random.default_rng(0)
    index = {tok: [f"<{c}_{int(rng.integers(8))}>" for c in "abc"] for tok in tokens}
    index["not-in-dataset"] = ["<a_0>", "<b_0>", "<c_0>"]
    index = dict(reversed(index.items()))  # the file's order is not the dataset's: keys decide
    path = tmp_path / "x.index.json"
    path.write_text(json.dumps(index))
    item_codes = ItemCodes.from_index_json(path, dataset, codebook_size=8)
    assert item_codes.n_items == dataset.item_num and (item_codes.codes[0] == PAD_CODE).all()
    for token in tokens:
        internal = dataset.token2id(dataset.iid_field, token)
        assert [f"<{c}_{v}>" for c, v in zip("abc", item_codes.codes[internal])] == index[token]
    # written back in the same layout: same keys (every dataset item), same code tokens
    item_codes.to_index_json(tmp_path / "back.index.json", dataset)
    back = json.loads((tmp_path / "back.index.json").read_text())
    assert back == {tok: index[tok] for tok in tokens}
    assert np.array_equal(ItemCodes.from_index_json(tmp_path / "back.index.json", dataset).codes, item_codes.codes)
    del index[tokens[0]]
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="1 items of the dataset have no code"):
        ItemCodes.from_index_json(path, dataset)


@pytest.mark.parametrize("name", ["letter", "rqvae"])
def test_published_beauty_codes_are_complete_and_unique(name):
    """artifacts/: every Beauty item once, 5 tokens in the release's layout, no two items alike."""
    import re
    from pathlib import Path

    codes = json.loads((Path(__file__).parents[1] / "artifacts" / f"Beauty.{name}.index.json").read_text())
    assert sorted(map(int, codes)) == list(range(12101))
    sequences = [tuple(tokens) for tokens in codes.values()]
    assert len(set(sequences)) == len(sequences)
    pattern = re.compile(r"<([a-e])_(\d+)>")
    for tokens in sequences:
        parsed = [pattern.fullmatch(token).groups() for token in tokens]
        assert [level for level, _ in parsed] == list("abcde") and all(int(c) < 256 for _, c in parsed)


# ---- bad codes files: one clear ValueError each, nothing grown or dropped silently ---------------
def test_bad_index_json_one_clear_error_each(tiny_dataset, tmp_path, caplog):
    from recbole_letter.tokenizer import get_item_codes

    name, cfg = tiny_dataset
    _, _, train_data, _, _ = quick_start.prepare("SASRec", name, config_dict=cfg)
    dataset = train_data.dataset
    tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field][1:]]
    good = {tok: [f"<a_{k % 8}>", f"<b_{k // 8 % 8}>", f"<c_{k // 64}>"] for k, tok in enumerate(tokens)}
    path = tmp_path / "x.index.json"

    def error_of(content, code_limit=256):
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(ValueError) as error:
            ItemCodes.from_index_json(path, dataset, code_limit=code_limit)
        assert "\n" not in str(error.value) and str(error.value).startswith(str(path))
        return str(error.value)

    first = tokens[0]
    assert error_of({}).endswith("no item codes (an empty object)")
    assert error_of([["<a_1>"]]).endswith("expected an object {item id: [code tokens]}, got a list")
    assert "x.index.json:1: malformed JSON" in error_of('{"1": ["<a_1>"')
    assert f"item {first!r}: expected a list of code tokens" in error_of({**good, first: "<a_1>"})
    assert f"item {first!r}: expected a list of code tokens" in error_of({**good, first: []})
    assert f"item {first!r}: bad code token 'a_1'" in error_of({**good, first: ["a_1", "<b_1>", "<c_1>"]})
    # a code of 10**9 would size a 10**9-row embedding table; <a_999> would grow the codebook to 1000
    for code in (10**9, 999, 256):
        message = error_of({**good, first: [f"<a_{code}>", "<b_1>", "<c_1>"]})
        assert f"item {first!r}: code '<a_{code}>' is out of range for codebook_size 256" in message
    assert "level 2 (expected '<b_...>')" in error_of({**good, first: ["<a_1>", "<c_1>", "<b_1>"]})
    message = error_of({**good, first: ["<a_1>", "<b_1>"]})  # uneven: refused, not padded
    assert f"codes of uneven length (1 items have 2, {len(tokens) - 1:,} items have 3 levels; e.g. item {first!r}" in message
    assert "1 items of the dataset have no code" in error_of({k: v for k, v in good.items() if k != first})
    dup = json.dumps(good)[:-1] + f', "{first}": ["<a_0>", "<b_0>", "<c_0>"]}}'
    assert f"item {first!r} appears twice" in error_of(dup)

    # a good file: loaded as is; items the dataset does not have are counted in a warning, not dropped silently
    path.write_text(json.dumps({**good, "not-an-item": ["<a_0>", "<b_0>", "<c_0>"]}))
    with caplog.at_level("WARNING"):
        codes = ItemCodes.from_index_json(path, dataset, code_limit=16)
    assert codes.codebook_sizes == [8, 8, (len(tokens) - 1) // 64 + 1]  # each level's largest code + 1, as before
    assert "1 items of the file are not in the dataset (e.g. ['not-an-item'])" in caplog.text
    # the tokenizer hook checks the range against the config's codebook_size
    config = {"item_codes_file": str(path), "codebook_size": 4, "item_codes_collisions": "free_last_code"}
    with pytest.raises(ValueError, match="is out of range for codebook_size 4"):
        get_item_codes(config, dataset)
    assert get_item_codes({**config, "codebook_size": 256}, dataset).n_items == dataset.item_num


def test_bad_codes_arrays_and_npz(tmp_path):
    with pytest.raises(ValueError, match=r"item 2, level 2: code -1 is a missing code \(codes of uneven length"):
        ItemCodes(np.array([[-1, -1], [0, 1], [1, -1]]), [2, 2])
    with pytest.raises(ValueError, match=r"item 1, level 1: code 5 is out of range for a codebook of 4"):
        ItemCodes(np.array([[-1, -1], [5, 1]]), [4, 4])
    with pytest.raises(ValueError, match=r"3 codebook sizes for 2 levels"):
        ItemCodes(np.array([[-1, -1], [0, 1]]), [4, 4, 4])
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz: not an item codes file"):
        ItemCodes.load(tmp_path / "other.npz")
    np.savez(tmp_path / "float.npz", codes=np.zeros((2, 2)), codebook_sizes=np.array([4, 4]))
    with pytest.raises(ValueError, match=r"float.npz: codes and codebook_sizes must be integer arrays"):
        ItemCodes.load(tmp_path / "float.npz")
    np.savez(tmp_path / "objects.npz", codes=np.array([[-1], [0]], dtype=object), codebook_sizes=np.array([4]))
    with pytest.raises(ValueError, match=r"objects.npz: not an item codes file"):  # never unpickled
        ItemCodes.load(tmp_path / "objects.npz")


# ---- the report's rankings: ties at their expected rank ------------------------------------------
def test_report_ranking_counts_ties_at_expected_rank():
    import torch

    from recbole_letter.tokenizer.report import _rank_targets, expected_hits

    class Constant(torch.nn.Module):  # a sequence encoder whose output does not matter here
        def forward(self, item_seq, item_seq_len):
            return torch.ones(len(item_seq), 4)

    n_items = 41  # 40 real items + padding
    targets = torch.arange(1, n_items)
    batches = [(torch.zeros(len(targets), 3, dtype=torch.long), torch.full((len(targets),), 3), targets)]
    identity = torch.zeros(n_items, 4)
    identity[targets, 0] = -targets.float()  # item 1 scores highest, item 40 lowest
    result = _rank_targets(Constant(), {"constant": torch.zeros(n_items, 4), "ordered": identity}, batches)
    # every item scores the same: chance (k / 40), not 1.0 as when ties counted as hits
    assert result["constant"]["recall@10"] == pytest.approx(10 / 40)
    assert result["constant"]["recall@5"] == pytest.approx(5 / 40)
    ndcg10 = sum(1 / np.log2(r + 2) for r in range(10)) / 40
    assert result["constant"]["ndcg@10"] == pytest.approx(ndcg10)
    # no ties: targets 1..10 are ranked 0..9, so exactly 10 of 40 are hits
    assert result["ordered"]["recall@10"] == pytest.approx(10 / 40)
    assert result["ordered"]["ndcg@10"] == pytest.approx(ndcg10)
    # one item tied with the target at the top: rank 0 or 1, each half the time
    scores = torch.tensor([[-float("inf"), 5.0, 5.0, 1.0]])
    recall, ndcg = expected_hits(scores, torch.tensor([1]), 1)
    assert recall.item() == pytest.approx(0.5) and ndcg.item() == pytest.approx(0.5)
    recall, ndcg = expected_hits(scores, torch.tensor([3]), 2)
    assert recall.item() == 0.0 and ndcg.item() == 0.0


def test_report_ranking_nan_scores_never_count_as_hits():
    import torch

    from recbole_letter.tokenizer.report import expected_hits

    nan = float("nan")
    # before: a NaN target was "tied with itself" only, so rank 0: a perfect hit
    scores = torch.tensor([[-float("inf"), nan, 1.0, 2.0], [-float("inf"), 1.0, nan, nan]])
    recall, ndcg = expected_hits(scores, torch.tensor([1, 1]), 1)
    assert recall.tolist() == [0.0, 0.0] and ndcg.tolist() == [0.0, 0.0]
    # NaN scores of other items rank above the target (target 1 in row 2 is third, not first)
    recall, ndcg = expected_hits(scores, torch.tensor([1, 1]), 3)
    assert recall.tolist() == [0.0, 1.0]  # row 1: the NaN target misses even at k = 3
    assert ndcg[1].item() == pytest.approx(0.5)  # rank 2: 1 / log2(4)
    recall, _ = expected_hits(scores, torch.tensor([1, 1]), 2)
    assert recall.tolist() == [0.0, 0.0]
