"""The tokenizer end to end on the 150-user ml-100k slice: codes, cache, determinism, report."""

import json
import os

import numpy as np
import pytest
import torch

import recbole_letter  # noqa: F401
from recbole_letter.quick_start import PROPERTIES_DIR, build_config
from recbole_letter.tokenizer import trainer
from recbole_letter.tokenizer.item_codes import ItemCodes

TINY_TOKENIZER = {
    "cf_epochs": 1, "cf_n_layers": 1, "cf_inner_size": 32, "cf_batch_size": 4096,
    "tokenizer_epochs": 6, "tokenizer_eval_interval": 3, "tokenizer_batch_size": 256, "tokenizer_init_samples": 256,
    "tokenizer_encoder_layers": [64], "num_levels": 3, "codebook_size": 16, "div_num_clusters": 4,
    "div_cluster_size_min": 2, "div_cluster_size_max": 8, "div_cluster_interval": 2,
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tiny_data_path, tmp_path_factory):
    """(config, train_dataset, valid_data) with a shared checkpoint dir, so embeddings are computed once."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from conftest import tiny_config

    config_dict = tiny_config(tiny_data_path)
    config_dict.update(TINY_TOKENIZER, checkpoint_dir=str(tmp_path_factory.mktemp("ckpt")))
    config = build_config("SASRec", "ml-tiny", [str(PROPERTIES_DIR / "tokenizer.yaml")], config_dict)
    init_seed(config["seed"], True)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster, and the CI CPU is shared
    yield config, train_data.dataset, valid_data
    torch.set_num_threads(threads)


def with_keys(config, **overrides):
    import copy

    new = copy.deepcopy(config)
    for k, v in overrides.items():
        new[k] = v
    return new


def test_codes_unique_padding_free_and_cached(tiny, monkeypatch):
    config, dataset, _ = tiny
    codes = trainer.load_or_train_item_codes(config, dataset)
    assert codes.n_items == dataset.item_num
    assert (codes.codes[0] == -1).all() and (codes.codes[1:] >= 0).all()
    assert codes.collision_rate() == 0.0
    assert codes.codebook_sizes[:3] == [16, 16, 16]
    # the cache answers the second call: training would fail now
    monkeypatch.setattr(trainer, "train_tokenizer", lambda *a, **k: pytest.fail("retrained"))
    assert np.array_equal(trainer.load_or_train_item_codes(config, dataset).codes, codes.codes)


def test_same_seed_same_codes_and_corrupt_cache_rebuilt(tiny):
    config, dataset, _ = tiny
    first = trainer.load_or_train_item_codes(config, dataset)
    run_dir = os.path.join(trainer.cache_root(config), trainer.cache_keys(config, dataset)["tokenizer"])
    with open(os.path.join(run_dir, "codes.npz"), "wb") as f:
        f.write(b"partial")  # a crash mid-write of a non-atomic writer
    os.remove(os.path.join(run_dir, "tokenizer.pt"))
    again = trainer.load_or_train_item_codes(config, dataset)  # retrained from scratch, same seed
    assert np.array_equal(again.codes, first.codes)


def test_hyper_parameters_change_the_key_but_reuse_embeddings(tiny):
    config, dataset, _ = tiny
    keys, plain = trainer.cache_keys(config, dataset), trainer.cache_keys(with_keys(config, alpha=0.0, beta=0.0), dataset)
    assert keys["semantic"] == plain["semantic"] and keys["cf"] == plain["cf"]
    assert keys["tokenizer"] != plain["tokenizer"]
    assert trainer.cache_keys(with_keys(config, text_fields=["movie_title", "x"]), dataset)["semantic"] != keys["semantic"]


def test_plain_rqvae_ignores_the_cf_table(tiny):
    """alpha = beta = 0 is TIGER's tokenizer: the CF table must not change the codes, and no clustering runs."""
    config, dataset, _ = tiny
    plain = with_keys(config, alpha=0.0, beta=0.0)
    semantic, _ = trainer.load_or_compute_semantic_emb(plain, dataset, trainer.cache_keys(plain, dataset)["semantic"])
    cf = np.random.default_rng(0).normal(size=(dataset.item_num, 32)).astype(np.float32)
    model_a, history = trainer.train_tokenizer(plain, semantic, cf, show_progress=False)
    model_b, _ = trainer.train_tokenizer(plain, semantic, cf * 5 + 1, show_progress=False)
    assert history["seconds_clustering"] == 0.0
    codes_a, _ = model_a.encode_codes(torch.from_numpy(semantic[1:]))
    codes_b, _ = model_b.encode_codes(torch.from_numpy(semantic[1:]))
    assert torch.equal(codes_a, codes_b)
    model_c, _ = trainer.train_tokenizer(with_keys(config, beta=0.0), semantic, cf, show_progress=False)
    codes_c, _ = model_c.encode_codes(torch.from_numpy(semantic[1:]))
    assert not torch.equal(codes_a, codes_c)  # alpha > 0 does use it


def test_tokenize_only_writes_report(tiny, capsys):
    config, dataset, valid_data = tiny
    report = trainer.tokenize_only(config, dataset, eval_data=valid_data)
    printed = capsys.readouterr().out
    assert "collision rate before" in printed and report["report_json"] in printed
    with open(report["report_json"]) as f:
        saved = json.load(f)
    for key in ("n_items", "collision_rate_before", "collision_rate_after", "codes_used_per_level", "entropy_per_level",
                "level1_group_counts", "cf_neighbour_code_overlap", "zhat_ranking"):  # fmt: skip
        assert key in saved
    assert saved["n_items"] == dataset.item_num - 1 and saved["collision_rate_after"] == 0.0
    assert saved["collision_rate_after_sinkhorn"] <= saved["collision_rate_before"]
    assert sum(saved["level1_group_counts"]) == saved["n_items"]
    # level 1's figures agree with its code histogram; entropies within [0, log2 N]; an overlap is a share
    counts = np.asarray(saved["level1_code_counts"])
    assert counts.sum() == saved["n_items"] and saved["codes_used_per_level"][0] == (counts > 0).sum()
    share = counts[counts > 0] / counts.sum()
    assert saved["entropy_per_level"][0] == pytest.approx(-(share * np.log2(share)).sum())
    assert all(0 <= e <= m + 1e-9 for e, m in zip(saved["entropy_per_level"], saved["max_entropy_per_level"]))
    assert 0.0 <= saved["cf_neighbour_code_overlap"] <= 1.0
    assert set(saved["zhat_ranking"]["z_hat"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert all(os.path.isfile(p) for p in saved["plots"].values())
    # the final codes, exported in the release's layout, read back as item_codes_file give the same table
    assert report["index_json"] in printed
    exported = ItemCodes.from_index_json(report["index_json"], dataset)
    assert np.array_equal(exported.codes, trainer.load_or_train_item_codes(config, dataset).codes)


def test_report_for_released_index_json(tiny, tmp_path):
    from recbole_letter.tokenizer.trainer import report_for_index_json

    config, dataset, _ = tiny
    tokens = dataset.field2id_token[dataset.iid_field]
    index = {str(tokens[i]): [f"<a_{i % 3}>", f"<b_{i % 5}>"] for i in range(1, dataset.item_num)}
    path = tmp_path / "tiny.index.json"
    path.write_text(json.dumps(index))
    report = report_for_index_json(config, dataset, str(path), out_dir=str(tmp_path / "rep"))
    assert report["codes_used_per_level"] == [3, 5]
    assert report["collision_rate_before"] == pytest.approx(1 - 15 / (dataset.item_num - 1))
    assert report["collision_rate_after"] == 0.0 and report["disambiguation_level_added"]


def test_user_cf_table_in_atomic_order_and_with_ids(tiny, tmp_path):
    from recbole_letter.tokenizer.cf_embedding import load_cf_table

    _, dataset, _ = tiny
    tokens = dataset.field2id_token[dataset.iid_field][1:]
    table = np.random.default_rng(0).normal(size=(len(tokens), 4)).astype(np.float32)
    order = np.random.default_rng(1).permutation(len(tokens))  # the file's rows in another order: ids decide
    torch.save({"item_id": [str(tokens[i]) for i in order], "embedding": torch.from_numpy(table[order])},
               tmp_path / "cf.pt")
    aligned = load_cf_table(str(tmp_path / "cf.pt"), dataset)
    assert np.allclose(aligned[1:], table) and (aligned[0] == 0).all()
    atomic = np.zeros((max(int(t) for t in tokens) + 1, 4), dtype=np.float32)
    atomic[[int(t) for t in tokens]] = table
    np.save(tmp_path / "cf.npy", atomic)
    assert np.allclose(load_cf_table(str(tmp_path / "cf.npy"), dataset)[1:], table)
    np.save(tmp_path / "short.npy", atomic[:5])
    with pytest.raises(ValueError, match="no CF row"):
        load_cf_table(str(tmp_path / "short.npy"), dataset)


def test_bce_cf_model_trains_on_pairs(tiny):
    from recbole.data.dataloader import TrainDataLoader
    from recbole.sampler import Sampler

    from recbole_letter.tokenizer.cf_embedding import build_cf_model

    config, dataset, _ = tiny
    model, cf_config = build_cf_model(with_keys(config, cf_loss_type="BCE"), dataset)
    sampler = Sampler(["train"], [dataset], "uniform", 1.0).set_phase("train")
    batch = next(iter(TrainDataLoader(cf_config, dataset, sampler, shuffle=True)))
    model.eval()  # no dropout: the loss can be recomputed by hand
    loss = model.calculate_loss(batch)
    loss.backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0
    with torch.no_grad():  # positives labelled 1, the sampled negative 0: -log s(pos) - log(1 - s(neg))
        user = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
        pos = (user * model.item_embedding(batch[model.POS_ITEM_ID])).sum(-1)
        neg = (user * model.item_embedding(batch[model.NEG_ITEM_ID])).sum(-1)
        expected = torch.nn.functional.softplus(-pos).mean() + torch.nn.functional.softplus(neg).mean()
    torch.testing.assert_close(loss.detach(), expected)


# ---- the CF table: held-out validation, early stopping, per-epoch save and resume ----------------------------
def test_cf_holdout_is_each_users_last_training_target(tiny):
    """The CF model validates on each user's last training target: one row per user, the item right before
    the valid target (the valid row's history ends with it), earlier than the valid/test targets."""
    from recbole_letter.tokenizer.cf_embedding import holdout_rows

    config, dataset, valid_data = tiny
    fit, held = holdout_rows(dataset)
    users = dataset.inter_feat[dataset.uid_field].numpy()
    assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == len(dataset)
    assert sorted(users[held].tolist()) == sorted(set(users.tolist()))  # exactly one row per user
    times = dataset.inter_feat[dataset.time_field].numpy()
    for row in held:  # the latest training target of its user
        assert times[row] == times[users == users[row]].max()
    valid = valid_data.dataset.inter_feat
    valid_users = valid[dataset.uid_field].numpy()
    last_in_valid_history = valid[dataset.item_id_list_field].numpy()[np.arange(len(valid)), valid[dataset.item_list_length_field].numpy() - 1]
    held_target = dict(zip(users[held], dataset.inter_feat[dataset.iid_field].numpy()[held]))
    held_time = dict(zip(users[held], times[held]))
    valid_time = dict(zip(valid_users, valid[dataset.time_field].numpy()))
    for user, item in zip(valid_users, last_in_valid_history):
        assert held_target[user] == item and held_time[user] <= valid_time[user]


@pytest.fixture
def cf_slice(tiny):
    """(config, the first 2,000 training rows): CF epochs in a fraction of a second."""
    config, dataset, _ = tiny
    return config, dataset.copy(dataset.inter_feat[np.arange(2000)])


def test_cf_early_stopping_keeps_the_best_epoch(cf_slice, monkeypatch):
    from recbole_letter.tokenizer import cf_embedding

    config, dataset = cf_slice
    scores, snapshots = iter([0.10, 0.30, 0.20, 0.25, 0.50, 0.60]), []

    def scripted(model, *args, **kwargs):  # the held-out figure rises, then falls twice in a row
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"ndcg@10": next(scores)}

    monkeypatch.setattr(cf_embedding, "evaluate_cf", scripted)
    model, history = cf_embedding.train_cf_model(with_keys(config, cf_epochs=6, cf_stopping_step=2), dataset, show_progress=False)
    assert history["epoch"] == [1, 2, 3, 4] and history["stopped_early"]
    assert history["best_epoch"] == 2 and history["best_valid"] == 0.30
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())  # epoch 2's weights
    assert not all(torch.equal(v, snapshots[3][k]) for k, v in model.state_dict().items())


def test_cf_training_resumes_after_a_crash_to_the_same_table(cf_slice, monkeypatch, capsys):
    """Kill after epoch 2 (of 4), rerun: resumes at epoch 3 and ends with the uninterrupted run's table, bitwise
    (model, optimizer, best-so-far and all RNG states — torch, numpy, python, the loader's shuffle — are saved)."""
    from recbole_letter.tokenizer import cf_embedding

    config, dataset = cf_slice
    config = with_keys(config, cf_epochs=4, cf_stopping_step=10)
    key = trainer.cache_keys(config, dataset)["cf"]
    straight, _, _ = trainer.load_or_train_cf(with_keys(config, checkpoint_dir=str(trainer.cache_root(config)) + "_a"), dataset, key)
    real, calls = cf_embedding.evaluate_cf, []

    def crash_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    crashed = with_keys(config, checkpoint_dir=str(trainer.cache_root(config)) + "_b")
    monkeypatch.setattr(cf_embedding, "evaluate_cf", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        trainer.load_or_train_cf(crashed, dataset, key)
    partial = os.path.join(trainer.cache_root(crashed), f"cf_{key}.partial.pt")
    assert os.path.isfile(partial)
    monkeypatch.setattr(cf_embedding, "evaluate_cf", real)
    capsys.readouterr()
    resumed, _, _ = trainer.load_or_train_cf(crashed, dataset, key)
    assert f"CF table: resuming at epoch 3 of 4 from {partial}" in capsys.readouterr().out
    assert np.array_equal(resumed, straight)
    assert not os.path.exists(partial) and os.path.isfile(os.path.join(trainer.cache_root(crashed), f"cf_{key}.npz"))
