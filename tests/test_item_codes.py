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
