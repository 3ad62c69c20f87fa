"""TIGER / LETTER-TIGER: the incremental T5 decoder, agreement with transformers' generate, and the
RecBole model end to end (training, full-sort scores, predict, checkpoint reload)."""

import copy
import json
import os
import random
import threading
import time

import numpy as np
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_letter.generation import (
    CodeTrie,
    T5BeamDecoder,
    constrained_beam_search,
    item_code_token_table,
    t5_cache_step_fn,
)
from recbole_letter.generation.t5_decoder import encode, encode_by_length
from numerics import EPS32, assert_as_accurate_as, assert_as_close_as, float32_tolerance, max_error
from test_generation import random_codes

SIZES = [4, 5, 3]
# the trained tiny TIGER below (d_model 16, d_ff 32, one encoder and one decoder block, a vocabulary of 50
# tokens): its longest reduction is the log-softmax over the vocabulary, its chain from tokens to logits
# 8 + 13 + 3 reductions (as counted at test_t5_cpu.FORWARD_STEPS), twice that for gradients. Its float32
# error, measured against a float64 copy on AVX-512 and AVX2, is < 1e-6 relative (of the largest value),
# 10-20x below float32_tolerance(..., TINY_REDUCTION, TINY_STEPS): the tests compare within that bound.
TINY_REDUCTION, TINY_STEPS = 50, 24


def float64_copy(model):
    """The same model in float64: exact at this size (what float32 results are compared with)."""
    return copy.deepcopy(model).double()


def assert_same_beams(a, b, tolerance):
    """Two ``full_sort_predict`` outputs (-inf outside each user's beam): the same scores within
    ``tolerance``, and the same items but where one at the edge of a beam and one just outside it score
    within ``tolerance`` of each other (either may be kept: a float32 near-tie)."""
    kept_a, kept_b = torch.isfinite(a), torch.isfinite(b)
    both = kept_a & kept_b
    assert (a[both].double() - b[both].double()).abs().max() <= tolerance
    for row in range(a.shape[0]):
        for scores, kept in ((a[row], kept_a[row]), (b[row], kept_b[row])):
            only = kept & ~both[row]
            assert (scores[only] - scores[kept].min() <= tolerance).all(), f"user {row}: another beam"
        assert kept_a[row].sum() == kept_b[row].sum()


def tiny_t5(vocab, seed=0):
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                      num_decoder_layers=2, dropout_rate=0.1, feed_forward_proj="relu", pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0, initializer_factor=5.0)
    return T5ForConditionalGeneration(config).eval()


def histories(n_users, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (n_users, 9), generator=gen)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[0, 6:] = False  # a shorter history, right-padded
    return tokens.masked_fill(~mask, 0), mask


def teacher_forced_scores(t5, tokens, mask, item_tokens):
    """Brute force: log p(item tokens | history) of every item for every user -> [B, n_items - 1]."""
    n_users, n_items = tokens.shape[0], item_tokens.shape[0] - 1
    targets = item_tokens[1:].repeat(n_users, 1)  # [B * n_items, T]
    start = torch.zeros_like(targets[:, :1])
    with torch.no_grad():
        logits = t5(input_ids=tokens.repeat_interleave(n_items, 0), attention_mask=mask.long().repeat_interleave(n_items, 0),
                    decoder_input_ids=torch.cat([start, targets[:, :-1]], 1)).logits
    log_probs = torch.log_softmax(logits, -1).gather(2, targets.unsqueeze(2)).squeeze(2)
    return log_probs.sum(1).view(n_users, n_items)


def decoding_case(seed, n_items, n_users):
    """Random unique item codes -> their token table, a tiny random T5, and ``n_users`` histories with masks."""
    item_tokens = item_code_token_table(random_codes(np.random.default_rng(seed), n_items, SIZES), SIZES)
    vocab = 2 + sum(SIZES)
    return item_tokens, tiny_t5(vocab, seed=seed), *histories(n_users, vocab, seed=seed)


# the two step functions of a T5 (recbole_letter/generation/t5_decoder.py): the hand-written decoder that
# decoding uses, and the T5's own forward on transformers' KV cache (the reference it is timed against)
STEP_FUNCTIONS = {
    "hand-written": lambda t5, tokens, mask: T5BeamDecoder(t5, tokens, mask, decoder_start_token_id=0,
                                                           max_steps=len(SIZES)),
    "transformers-cache": lambda t5, tokens, mask: t5_cache_step_fn(t5, tokens, mask, decoder_start_token_id=0),
}


@pytest.mark.parametrize("decoder", STEP_FUNCTIONS)
def test_t5_step_functions_are_exact_against_brute_force(decoder):
    item_tokens, t5, tokens, mask = decoding_case(0, n_items=40, n_users=3)
    step_fn = STEP_FUNCTIONS[decoder](t5, tokens, mask)
    with torch.no_grad():
        item_ids, scores = constrained_beam_search(step_fn, CodeTrie(item_tokens), 3, beam_size=40)
    brute = teacher_forced_scores(t5, tokens, mask, item_tokens)  # [3, 40]
    exact = teacher_forced_scores(copy.deepcopy(t5).double(), tokens, mask, item_tokens)  # no rounding
    # float32 error of this (saturated: |scores| up to ~300) model: the brute force's own, on this CPU; the
    # incremental decoder (other shapes, other summation orders) may round as much again, with margin
    error = (brute.double() - exact).abs().max().item()
    for user in range(3):
        assert sorted(item_ids[user].tolist()) == list(range(1, 41))  # beam = catalogue: every item
        ranked = exact[user][item_ids[user] - 1]
        # the exact ranking, but for items whose exact scores are closer than float32 can tell
        assert (ranked.diff() <= 8 * error).all()
        assert (scores[user].double() - ranked).abs().max() <= 4 * error


@pytest.mark.parametrize("decoder", STEP_FUNCTIONS)
def test_same_lists_as_transformers_generate_with_prefix_trie(decoder):
    """The release's decoding: generate(num_beams, prefix_allowed_tokens_fn) over a dict trie."""
    item_tokens, t5, tokens, mask = decoding_case(1, n_items=50, n_users=4)
    beam = 6
    allowed = {}
    for item, seq in enumerate(item_tokens.tolist()[1:], start=1):
        for t in range(len(seq)):
            allowed.setdefault((0, *seq[:t]), set()).add(seq[t])
    sequence_to_item = {tuple(seq): item for item, seq in enumerate(item_tokens.tolist()) if item}
    with torch.no_grad():
        generated = t5.generate(input_ids=tokens, attention_mask=mask.long(), num_beams=beam,
                                num_return_sequences=beam, max_new_tokens=len(SIZES), do_sample=False,
                                length_penalty=0.0, early_stopping=True,
                                prefix_allowed_tokens_fn=lambda b, sent: sorted(allowed[tuple(sent.tolist())]))
        ours, _ = constrained_beam_search(STEP_FUNCTIONS[decoder](t5, tokens, mask), CodeTrie(item_tokens), 4, beam)
    theirs = torch.tensor([sequence_to_item[tuple(seq[1:])] for seq in generated.tolist()]).view(ours.shape)
    # the same lists, but where two items' exact scores are closer than float32 can tell apart: there either
    # computation may rank (or keep) either one first. Float32's error on this saturated model (|scores| up
    # to ~300): the brute force's own against float64, on this CPU; both decoders may round as much again
    brute = teacher_forced_scores(t5, tokens, mask, item_tokens)
    exact = teacher_forced_scores(copy.deepcopy(t5).double(), tokens, mask, item_tokens)
    tolerance = 8 * max(max_error(brute, exact), EPS32 * exact.abs().max().item())
    assert (ours == theirs).float().mean() > 0.5  # mostly identical: a check that can fail
    for user in range(ours.shape[0]):
        for a, b in zip(ours[user].tolist(), theirs[user].tolist()):
            assert a == b or abs(exact[user, a - 1] - exact[user, b - 1]) <= tolerance, (user, a, b)


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_t5_beam_decoder_gives_the_logits_of_transformers_cache_at_every_step(feed_forward):
    """Pinned against the installed transformers' T5: along a real beam search (beam_origin reordering,
    B -> B * k rows, a shorter history), the hand-written decoder's logits at every call are those of
    T5ForConditionalGeneration's own forward on its KV cache, to float32 rounding."""
    item_tokens, _, tokens, mask = decoding_case(3, n_items=60, n_users=4)
    torch.manual_seed(3)
    config = T5Config(vocab_size=2 + sum(SIZES), d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                      num_decoder_layers=3, feed_forward_proj=feed_forward, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    t5 = T5ForConditionalGeneration(config).eval()
    hand, reference = STEP_FUNCTIONS["hand-written"](t5, tokens, mask), STEP_FUNCTIONS["transformers-cache"](t5, tokens, mask)
    calls = []

    def both(last_tokens, beam_origin):
        ours, theirs = hand(last_tokens, beam_origin), reference(last_tokens, beam_origin)
        calls.append(ours.shape[0])
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
        return theirs

    with torch.no_grad():
        constrained_beam_search(both, CodeTrie(item_tokens), 4, beam_size=7)
    assert calls == [4, 16, 28]  # 4 first codes: 4 beams per user, then 7 (the rows grow twice)


def test_decoders_sharing_a_workspace_reuse_its_buffers_and_decode_the_same():
    # generate_items' chunks: the second, smaller chunk decodes in the first one's cache buffers
    item_tokens, t5, tokens, mask = decoding_case(2, n_items=40, n_users=5)
    trie = CodeTrie(item_tokens)
    chunks = [torch.arange(0, 3), torch.arange(3, 5)]
    workspace, pointers = {}, []
    with torch.no_grad():
        for rows in chunks:
            alone = constrained_beam_search(T5BeamDecoder(t5, tokens[rows], mask[rows], 0, trie.depth), trie,
                                            len(rows), 6)
            shared = constrained_beam_search(T5BeamDecoder(t5, tokens[rows], mask[rows], 0, trie.depth,
                                                           workspace=workspace), trie, len(rows), 6)
            pointers.append({name: buffer.data_ptr() for name, buffer in workspace.items()})
            assert torch.equal(shared[0], alone[0]) and torch.equal(shared[1], alone[1])
    assert set(pointers[0]) == {"self_cache_a", "self_cache_b"} and pointers[1] == pointers[0]


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_encoder_by_length_gives_the_t5_encoder_s_states_on_real_positions(feed_forward):
    """T5BeamDecoder's encoder (fused q/k/v, one bias for all layers, scaled_dot_product_attention, users in
    groups cut to their own longest history): transformers' encoder output on every real position, as
    accurate in float32, and zeros on the padding past a group's width (which cross-attention masks)."""
    torch.manual_seed(4)
    config = T5Config(vocab_size=20, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=3, num_decoder_layers=1,
                      feed_forward_proj=feed_forward, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    t5 = T5ForConditionalGeneration(config).eval()
    lengths = torch.tensor([9, 2, 5, 9, 1, 7, 3])  # left-aligned histories of 7 users, unsorted
    mask = torch.arange(9)[None, :] < lengths[:, None]
    tokens = torch.randint(2, 20, mask.shape, generator=torch.Generator().manual_seed(4)).masked_fill(~mask, 0)
    with torch.no_grad():
        theirs = t5.encoder(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        exact = float64_copy(t5).encoder(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        ours = encode_by_length(t5, tokens, mask, group_size=3)
        whole = encode(t5, tokens, mask)
    assert ours.shape == theirs.shape
    for result, name in ((ours[mask], "groups"), (whole[mask], "one batch")):
        assert_as_accurate_as(result, theirs[mask], exact[mask], f"encoder, {name}")
    # groups of 3 users by length: users 4, 1, 6 (width 3), then 2, 5, 0 and 3 (width 9)
    assert (ours[[4, 1, 6], 3:] == 0).all()


def test_rms_norm_is_t5_layer_norm():
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    from recbole_letter.generation.t5_decoder import rms_norm

    norm = T5LayerNorm(16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    hidden = torch.randn(5, 16) * 3
    torch.testing.assert_close(rms_norm(norm, hidden), norm(hidden))
    half = hidden.to(torch.bfloat16)  # another dtype than the weight's: the module, with its casts
    assert torch.equal(rms_norm(norm, half), norm(half))


# ---- the RecBole model ---------------------------------------------------------------------------
def write_random_index(data_path, name, path, levels=3, size=16, seed=0):
    """A LETTER-style *.index.json with random unique codes for every item of the dataset."""
    lines = (data_path / name / f"{name}.inter").read_text().splitlines()[1:]
    items = sorted({line.split("\t")[1] for line in lines})
    rng = random.Random(seed)
    picked = rng.sample(range(size ** levels), len(items))
    index = {item: [f"<{'abcd'[l]}_{(code // size ** l) % size}>" for l in range(levels)]
             for item, code in zip(items, picked)}
    path.write_text(json.dumps(index))
    return path


@pytest.fixture(scope="module")
def trained_tiger(tiny_data_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiger")
    # module scope runs before the per-test temp cwd: keep RecBole's ./log* out of the caller's folder
    previous_cwd = os.getcwd()
    os.chdir(folder)
    try:
        return _train_tiny_tiger(tiny_data_path, folder)
    finally:
        os.chdir(previous_cwd)


def _tiny_tiger_config(tiny_data_path, folder):
    from conftest import tiny_config

    index = write_random_index(tiny_data_path, "ml-tiny", folder / "tiny.index.json")
    config_dict = tiny_config(tiny_data_path)
    config_dict.update(item_codes_file=str(index), MAX_ITEM_LIST_LENGTH=5, d_model=16, d_ff=32, num_heads=2,
                       d_kv=8, num_encoder_layers=1, num_decoder_layers=1, train_batch_size=1024,
                       checkpoint_dir=str(folder / "saved"), beam_size=12, learning_rate=0.01)
    return config_dict


def _train_tiny_tiger(tiny_data_path, folder):
    from recbole_letter.quick_start import build_trainer, prepare
    from recbole_letter.model.letter_tiger import LETTER_TIGER

    config_dict = _tiny_tiger_config(tiny_data_path, folder)
    config, _, train_data, valid_data, test_data = prepare("LETTER_TIGER", "ml-tiny", config_dict=config_dict)
    model = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
    trainer = build_trainer(config, model)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    return config, train_data, test_data, trainer, test_result


def test_tiger_trains_and_ranks_with_recbole(trained_tiger):
    config, train_data, test_data, trainer, test_result = trained_tiger
    assert set(test_result) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    model = trainer.model.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
    n_users = batch[model.ITEM_SEQ].shape[0]
    assert scores.shape == (n_users, model.n_items)
    generated = torch.isfinite(scores)
    assert (generated.sum(1) == 12).all() and not generated[:, 0].any()
    # predict = the same log-likelihood the beam assigned to the generated items
    users, items = generated[:5].nonzero(as_tuple=True)
    pointwise = batch[:5][users]
    pointwise.update(type(pointwise)({model.ITEM_ID: items}))
    with torch.no_grad():
        predicted, exact = model.predict(pointwise), float64_copy(model).predict(pointwise)
    # each float32 path within the float32 bound of the exact log-likelihood (a sum of code_len log-probs;
    # sequence_log_likelihood rounds the float64 model's logits to float32 once: far below the bound)
    tolerance = float32_tolerance(exact, TINY_REDUCTION, TINY_STEPS * model.code_len)
    for result in (predicted, scores[users, items]):
        torch.testing.assert_close(result.double(), exact.double(), rtol=0, atol=tolerance)


def test_tiger_checkpoint_reloads_to_identical_scores(trained_tiger):
    from recbole_letter.model.letter_tiger import LETTER_TIGER
    from recbole_letter.trainer import load_checkpoint

    config, train_data, test_data, trainer, _ = trained_tiger
    checkpoint = load_checkpoint(trainer.saved_model_file)
    fresh = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
    fresh.load_state_dict(checkpoint["state_dict"])
    fresh.eval()
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        torch.testing.assert_close(fresh.full_sort_predict(batch), trainer.model.eval().full_sort_predict(batch))
    assert "item_code_tokens" in checkpoint["state_dict"]


def test_tiger_config_and_bad_beam(tiny_data_path, tmp_path):
    from conftest import tiny_config
    from recbole_letter.quick_start import build_config, prepare

    index = write_random_index(tiny_data_path, "ml-tiny", tmp_path / "tiny.index.json")
    config = build_config("TIGER", "ml-tiny", config_dict=tiny_config(tiny_data_path))
    assert config["alpha"] == 0 and config["beta"] == 0 and config["beam_size"] == 20
    assert build_config("LETTER_TIGER", "ml-tiny", config_dict=tiny_config(tiny_data_path))["alpha"] > 0
    config_dict = {**tiny_config(tiny_data_path), "item_codes_file": str(index), "beam_size": 5}
    config, _, train_data, _, _ = prepare("TIGER", "ml-tiny", config_dict=config_dict)
    from recbole_letter.model.letter_tiger import TIGER

    with pytest.raises(ValueError, match="beam_size"):
        TIGER(config, train_data.dataset, TIGER.tokenize(config, train_data.dataset))


def test_a_generator_starts_from_the_same_weights_whether_its_codes_were_built_or_read(tiny_data_path, tmp_path,
                                                                                      monkeypatch):
    """A tokenizer stage that trains draws from the random streams, one that reads its cache does not; the
    model's weights start from the run's seed either way (``quick_start.build_model`` seeds again after the
    stage), so a command gives the same result the first time and again from the cache."""
    from recbole_letter import quick_start

    config, _, train_data, _, _ = quick_start.prepare("LETTER_TIGER", "ml-tiny",
                                                      config_dict=_tiny_tiger_config(tiny_data_path, tmp_path))
    stage = quick_start.tokenizer_stage

    def initial_weights(draws):
        def drawing_stage(*args):  # the stage, drawing as much as a tokenizer's training would
            torch.rand(draws), np.random.rand(draws), [random.random() for _ in range(draws)]
            return stage(*args)

        monkeypatch.setattr(quick_start, "tokenizer_stage", drawing_stage)
        return quick_start.build_model(config, train_data.dataset).state_dict()

    read, built = initial_weights(0), initial_weights(1000)
    assert read.keys() == built.keys()
    assert all(torch.equal(read[name], built[name]) for name in read)


@pytest.mark.parametrize("buckets", [3, 8])
def test_length_buckets_give_the_same_loss_and_gradients(trained_tiger, buckets):
    config, train_data, _, trainer, _ = trained_tiger
    model = trainer.model.eval()  # no dropout: both paths see identical networks
    batch = next(iter(train_data))
    lengths = batch[model.ITEM_SEQ_LEN]
    assert lengths.min() < lengths.max()  # histories of different lengths: buckets trim differently

    def loss_and_grads(n_buckets, model=model):
        model.length_buckets = n_buckets
        model.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    previous = model.length_buckets
    exact_model = float64_copy(model)
    try:
        whole, whole_grads = loss_and_grads(1)
        split, split_grads = loss_and_grads(buckets)
        exact, exact_grads = loss_and_grads(1, exact_model)  # (ranking_loss rounds its logits to float32 once)
    finally:
        model.length_buckets = previous
        model.zero_grad()
    # both within the float32 bound of the exact loss and gradients (split: other shapes, other sums)
    for loss in (whole, split):
        torch.testing.assert_close(loss.double(), exact.double(), rtol=0,
                                   atol=float32_tolerance(exact, TINY_REDUCTION, TINY_STEPS))
    assert len(split_grads) == len(whole_grads) == len(exact_grads) > 0
    for a, b, e in zip(split_grads, whole_grads, exact_grads):
        for grad in (a, b):
            torch.testing.assert_close(grad.double(), e, rtol=0, atol=float32_tolerance(e, TINY_REDUCTION, 2 * TINY_STEPS))


def test_host_batch_cuts_histories_and_the_uncut_width_gives_the_same_logits(trained_tiger, monkeypatch):
    _, train_data, _, trainer, _ = trained_tiger
    model = trainer.model.eval()  # no dropout
    batch = next(iter(train_data))
    lengths = batch[model.ITEM_SEQ_LEN]
    short = batch[lengths < lengths.max()]  # a batch whose longest history is shorter than the table
    longest = int(short[model.ITEM_SEQ_LEN].max())
    assert longest < short[model.ITEM_SEQ].shape[1]
    item_seq, item_seq_len = short[model.ITEM_SEQ], short[model.ITEM_SEQ_LEN]
    targets = model.item_code_tokens[short[model.POS_ITEM_ID]]
    cut = model.host_batch(short)  # what LetterTrainer does on the host before moving a batch
    assert torch.equal(cut[model.ITEM_SEQ], item_seq[:, :longest])
    with torch.no_grad():
        exact = float64_copy(model).code_logits(item_seq, item_seq_len, targets)
        trimmed = model.code_logits(item_seq, item_seq_len, targets)  # a CPU trims on the device
        monkeypatch.setattr(model, "_trim", lambda tokens, mask: (tokens, mask))
        padded = model.code_logits(item_seq, item_seq_len, targets)  # elsewhere: as given, padding masked
        cut_logits = model.code_logits(cut[model.ITEM_SEQ], item_seq_len, targets)
    # padded: wider attention (masked columns), other summation blocks: both within the float32 bound
    for logits in (padded, trimmed):
        torch.testing.assert_close(logits.double(), exact, rtol=0,
                                   atol=float32_tolerance(exact, TINY_REDUCTION, TINY_STEPS))
    # cut on the host = trimmed on the device: the same tokens, shapes and ops in the same order, bitwise
    assert torch.equal(cut_logits, trimmed)
    monkeypatch.setattr(model, "torch_compile", {"backend": "eager"})
    whole = batch[lengths < lengths.max()]
    assert model.host_batch(whole)[model.ITEM_SEQ].shape == item_seq.shape  # compiled: static shapes


def test_trainer_runs_a_backward_pass_per_length_bucket_with_one_pass_s_result(trained_tiger, monkeypatch):
    import types

    from recbole_letter.benchmark import BatchList

    config, train_data, _, trainer, _ = trained_tiger
    model = trainer.model
    batches = BatchList(train_data)
    start = (copy.deepcopy(model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()), model.length_buckets)
    backward = torch.Tensor.backward
    passes = []

    def counted_backward(tensor, *args, **kwargs):
        passes.append(1)
        return backward(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counted_backward)
    # fit's cosine schedule has taken the learning rate to 0: steps at the configured rate, so the weights
    # move (by ~0.16 over the epoch); the optimiser's state is loaded from copies (load_state_dict keeps
    # the tensors it is given, and Adam updates them in place, casting them to the weights' dtype)
    monkeypatch.setattr(trainer, "scheduler", types.SimpleNamespace(step=lambda: None))
    results = {}
    try:
        runs = (("per bucket", None, torch.float32), ("one pass", model.calculate_loss, torch.float32),
                ("exact", model.calculate_loss, torch.float64))
        for name, loss_func, dtype in runs:
            model.to(dtype).load_state_dict(start[0])
            trainer.optimizer.load_state_dict(copy.deepcopy(start[1]))
            for group in trainer.optimizer.param_groups:
                group["lr"] = config["learning_rate"]
            model.length_buckets = 3
            torch.manual_seed(0)  # the same dropout masks (they do not depend on the dtype): the same forwards
            passes.clear()
            loss = trainer._train_batches(batches, 0, loss_func=loss_func)
            results[name] = loss, len(passes), copy.deepcopy(model.state_dict())
    finally:
        model.float().load_state_dict(start[0])
        trainer.optimizer.load_state_dict(copy.deepcopy(start[1]))
        model.length_buckets = start[2]
    assert results["per bucket"][1] == 3 * len(batches) and results["one pass"][1] == len(batches)
    # the same forwards; the backward passes sum the buckets' gradients in another order. Adam divides each
    # gradient by its own running size, so an element whose gradient is small next to the terms it sums
    # moves by a rounding that can be ~1 of its step, and the steps feed back through the weights: no fixed
    # bound holds on every CPU (docs/reliability.md). So both float32 runs are compared with the float64 run
    # of the same steps: the per-bucket weights are as accurate as the one-pass weights, tensor by tensor
    # (one part's gradient scaled by 1.01 fails it by far)
    for key, exact in results["exact"][2].items():
        per_bucket, one_pass = results["per bucket"][2][key], results["one pass"][2][key]
        if exact.is_floating_point():
            assert per_bucket.dtype == one_pass.dtype == torch.float32
            assert_as_accurate_as(per_bucket, one_pass, exact, key)
        else:
            assert torch.equal(per_bucket, exact) and torch.equal(one_pass, exact)
    exact_loss = torch.tensor(results["exact"][0], dtype=torch.float64)
    per_bucket_loss, one_pass_loss = (torch.tensor(results[run][0], dtype=torch.float64)
                                      for run in ("per bucket", "one pass"))
    assert_as_close_as(per_bucket_loss, one_pass_loss, exact_loss, "epoch loss",
                       floor=float32_tolerance(exact_loss, TINY_REDUCTION, len(batches) * TINY_STEPS, k=0.5))


def test_weight_decay_spares_the_norms_and_biases_as_the_release_s_trainer(trained_tiger, caplog):
    # the LETTER release trained with transformers' Trainer, which decays neither the T5's layer norms' scales nor
    # its relative-position bias tables; RecBole's optimiser (decay_norms_and_biases: True) decays every parameter
    from transformers import Trainer

    config, _, _, trainer, _ = trained_tiger
    model = trainer.model
    names = {id(p): name for name, p in model.named_parameters()}
    spared = {name for name in names.values() if "layer_norm" in name or "relative_attention_bias" in name}
    assert not config["decay_norms_and_biases"] and spared and len(spared) < len(names)
    # transformers' own rule (the method does not use its instance)
    assert set(names.values()) - set(Trainer.get_decay_parameter_names(None, model)) == spared
    caplog.set_level("INFO")
    lr, weight_decay = 0.1, 0.5
    optimizer = trainer._build_optimizer(learning_rate=lr, weight_decay=weight_decay)
    groups = [({names[id(p)] for p in group["params"]}, group["weight_decay"]) for group in optimizer.param_groups]
    assert groups == [(set(names.values()) - spared, weight_decay), (spared, 0.0)]
    n_spared = sum(p.numel() for name, p in model.named_parameters() if name in spared)
    assert any(f"not on the {n_spared:,} of the normalisation layers" in r.getMessage() for r in caplog.records)
    # one step on zero gradients: Adam's own update is 0, so a decayed weight shrinks by lr * weight_decay and a
    # spared one stays
    before = copy.deepcopy(model.state_dict())
    gradients = {name: p.grad for name, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        for name, p in model.named_parameters():
            expected = before[name] if name in spared else before[name] * (1 - lr * weight_decay)
            torch.testing.assert_close(p.detach(), expected, msg=name)
    finally:
        model.load_state_dict(before)
        for name, p in model.named_parameters():
            p.grad = gradients[name]
    # RecBole's rule: one group, every parameter decayed
    config["decay_norms_and_biases"] = True
    try:
        optimizer = trainer._build_optimizer(weight_decay=weight_decay)
    finally:
        config["decay_norms_and_biases"] = False
    assert [len(group["params"]) for group in optimizer.param_groups] == [len(names)]
    assert optimizer.param_groups[0]["weight_decay"] == weight_decay


def test_gradients_are_clipped_at_the_release_s_norm_and_unscaled_first(trained_tiger, monkeypatch):
    # the release's transformers Trainer clips the gradients' norm at TrainingArguments.max_grad_norm (its
    # default, 1.0); under a loss scaler the norm must be that of the true gradients, not the scaled ones
    import dataclasses
    import types

    from transformers import TrainingArguments

    import recbole_letter.trainer as trainer_module
    from recbole_letter.benchmark import BatchList

    config, train_data, _, trainer, _ = trained_tiger
    release_default = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}["max_grad_norm"]
    assert config["clip_grad_norm"] == {"max_norm": release_default} == trainer.clip_grad_norm
    max_norm = 1e-3  # far below this model's gradients, so every batch is clipped
    norms, clip = [], trainer_module.clip_grad_norm_  # norms: (before, after) clipping, per batch

    def recording_clip(parameters, **kwargs):
        parameters = [p for p in parameters if p.grad is not None]
        before = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
        result = clip(parameters, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
        norms.append((before.item(), after.item()))
        return result

    monkeypatch.setattr(trainer_module, "clip_grad_norm_", recording_clip)
    monkeypatch.setattr(trainer, "clip_grad_norm", {"max_norm": max_norm})
    # fit's cosine schedule has taken the learning rate to ~0; held there, both passes see the same weights
    monkeypatch.setattr(trainer, "scheduler", types.SimpleNamespace(step=lambda: None))
    batches = BatchList(train_data)  # the same batches for both passes
    start = copy.deepcopy((trainer.model.state_dict(), trainer.optimizer.state_dict()))
    by_scaler = {}
    try:
        for scaled in (False, True):
            monkeypatch.setattr(trainer, "enable_scaler", scaled)
            trainer.model.load_state_dict(start[0])
            trainer.optimizer.load_state_dict(copy.deepcopy(start[1]))
            norms.clear()
            with torch.random.fork_rng():
                torch.manual_seed(0)  # the same dropout masks
                trainer._train_batches(batches, 0)
            by_scaler[scaled] = list(norms)
    finally:
        trainer.model.load_state_dict(start[0])
        trainer.optimizer.load_state_dict(copy.deepcopy(start[1]))
        monkeypatch.undo()
    assert len(by_scaler[False]) == len(by_scaler[True]) == len(batches) > 0
    for scaled in (False, True):
        for before, after in by_scaler[scaled]:
            # clip_grad_norm_ multiplies by max_norm / (norm + 1e-6): the norm after is max_norm, up to that
            # 1e-6 and the float32 rounding of the product and of the sums of squares (~1e-6 relative)
            assert before > max_norm and after == pytest.approx(max_norm, rel=1e-3)
    # the scaler multiplies the loss by 2 ** 16 at first, so clipping the scaled gradients would see norms
    # 65,536x the true ones. Unscaled, they are the true gradients of the same batches at the same weights:
    # a power-of-two scale and its inverse are exact in float32 (no gradient here nears over- or underflow),
    # so the norms agree to float32 rounding; 1e-4 leaves room for a kernel that sums in another order
    for (plain, _), (unscaled, _) in zip(by_scaler[False], by_scaler[True]):
        assert unscaled == pytest.approx(plain, rel=1e-4)


def test_default_length_buckets_by_device(trained_tiger):
    from recbole_letter.model.generative_recommender import GenerativeRecommender

    assert GenerativeRecommender.default_length_buckets(torch.device("cpu")) == 8
    assert GenerativeRecommender.default_length_buckets(torch.device("cuda", 0)) == 1  # no GPU needed to decide
    config, _, _, trainer, _ = trained_tiger
    assert config["length_buckets"] is None and trainer.model.length_buckets == 8  # shipped: ~ -> CPU value


def test_t5_cpu_kernels_by_default_on_cpu_and_checkpoints_load_either_way(trained_tiger):
    from transformers.models.t5.modeling_t5 import T5DenseActDense

    from recbole_letter.model.letter_tiger import LETTER_TIGER
    from recbole_letter.model.t5_cpu import FeedForward
    from recbole_letter.trainer import load_checkpoint

    config, train_data, test_data, trainer, _ = trained_tiger
    assert config["t5_cpu_kernels"] is None  # shipped: ~ -> on for a CPU
    assert isinstance(trainer.model.t5.encoder.block[0].layer[1].DenseReluDense, FeedForward)
    config["t5_cpu_kernels"] = False
    try:
        plain = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
    finally:
        config["t5_cpu_kernels"] = None
    assert type(plain.t5.encoder.block[0].layer[1].DenseReluDense) is T5DenseActDense
    plain.load_state_dict(load_checkpoint(trainer.saved_model_file)["state_dict"])
    batch = next(iter(test_data))[0]
    with torch.no_grad():
        a, b = plain.eval().full_sort_predict(batch), trainer.model.eval().full_sort_predict(batch)
        exact = float64_copy(plain).full_sort_predict(batch).double()
    # two float32 computations of one model (other kernels, other summation orders): each within the float32
    # bound of the exact scores (a sum of code_len log-probs), so within twice that of each other; the same
    # beams, but an item at a beam's edge may trade places with one that scores as much within that bound
    tolerance = 2 * float32_tolerance(a[torch.isfinite(a)], TINY_REDUCTION, TINY_STEPS * plain.code_len)
    assert_same_beams(a, b, tolerance)
    # and as accurate as the plain T5 (the sharp check: RMS errors against float64, same distribution)
    kept = torch.isfinite(a) & torch.isfinite(b) & torch.isfinite(exact)
    assert_as_accurate_as(b[kept], a[kept], exact[kept], "cpu kernels' scores")


def test_torch_compile_gives_the_t5_s_loss_and_gradients_at_full_width(trained_tiger):
    # aot_eager: the same tracing and autograd graphs as inductor, without the C++ compiler's minutes
    from recbole.data.interaction import Interaction

    from recbole_letter.model.letter_tiger import LETTER_TIGER
    from recbole_letter.trainer import load_checkpoint

    config, train_data, _, trainer, _ = trained_tiger
    state = load_checkpoint(trainer.saved_model_file)["state_dict"]
    graphs = []  # a backend that records the shapes of every graph's integer inputs (and its symbolic sizes), then runs it

    def recording_backend(graph, example_inputs):
        graphs.append([tuple(x.shape) if isinstance(x, torch.Tensor) else "symbolic size" for x in example_inputs
                       if not (isinstance(x, torch.Tensor) and x.is_floating_point())])
        return graph.forward

    keys = ("t5_cpu_kernels", "length_buckets", "torch_compile", "torch_compile_mode", "torch_compile_backend")
    saved = {key: config[key] for key in keys}
    try:
        config["t5_cpu_kernels"] = False
        eager = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
        config["t5_cpu_kernels"] = None  # ~ -> off under torch_compile, on a CPU too
        config["torch_compile"], config["torch_compile_backend"] = True, "aot_eager"
        compiled = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
        config["torch_compile_backend"] = recording_backend
        recorded = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
        config["t5_cpu_kernels"] = True
        with pytest.raises(ValueError, match="t5_cpu_kernels"):
            LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
        config["t5_cpu_kernels"], config["length_buckets"] = None, 8
        with pytest.raises(ValueError, match="length_buckets"):
            LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
        config["length_buckets"], config["torch_compile_mode"] = None, "reduce-overhead"
        with pytest.raises(ValueError, match="a setting of the inductor backend"):  # torch.compile only warns
            LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
        config["torch_compile_backend"], config["torch_compile_mode"] = None, "fastest"
        with pytest.raises(ValueError, match="reduce-overhead"):
            LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
    finally:
        for key, value in saved.items():
            config[key] = value
    assert not compiled.t5_cpu_kernels and compiled.length_buckets == 1
    assert compiled.torch_compile == {"backend": "aot_eager", "dynamic": False}
    assert compiled.t5._compiled_call_impl is not None and eager.t5._compiled_call_impl is None
    for model in (eager, compiled, recorded):
        model.load_state_dict(state)  # strict: the compiled T5 keeps the T5's parameter names
        model.eval()  # no dropout: the forwards must agree
    eager.length_buckets = 1
    exact = float64_copy(eager)
    batch = next(iter(train_data))
    batch = batch[batch[eager.ITEM_SEQ_LEN] < config["MAX_ITEM_LIST_LENGTH"]]  # histories with padding
    full_width = batch[eager.ITEM_SEQ].shape[1] * eager.code_len
    history = batch[eager.ITEM_SEQ], batch[eager.ITEM_SEQ_LEN]
    assert eager.forward_inputs(*history)[0].shape[1] < full_width  # (eager trims: this batch has padding)
    losses = []
    for model in (eager, compiled):
        loss = model.calculate_loss(batch)
        loss.backward()
        losses.append((loss.detach(), model.t5.shared.weight.grad.clone()))
    exact_loss = exact.calculate_loss(batch)  # (ranking_loss rounds the float64 logits to float32 once)
    exact_loss.backward()
    exact_grad = exact.t5.shared.weight.grad
    for loss, grad in losses:  # eager trims the padding, compiled runs the full width: each within the bound
        torch.testing.assert_close(loss.double(), exact_loss.double(), rtol=0,
                                   atol=float32_tolerance(exact_loss, TINY_REDUCTION, TINY_STEPS))
        torch.testing.assert_close(grad.double(), exact_grad, rtol=0,
                                   atol=float32_tolerance(exact_grad, TINY_REDUCTION, 2 * TINY_STEPS))

    # the compiled forward gets every batch at the full width: one graph for two batches of the same size
    # whose longest histories differ (the same batch with each history's last item dropped)
    lengths = batch[eager.ITEM_SEQ_LEN]
    assert int(lengths.max()) > 1
    shorter = batch[eager.ITEM_SEQ].clone()
    rows = torch.nonzero(lengths > 1).squeeze(1)
    shorter[rows, lengths[rows] - 1] = 0
    other = Interaction({eager.ITEM_SEQ: shorter, eager.ITEM_SEQ_LEN: torch.where(lengths > 1, lengths - 1, lengths),
                         eager.POS_ITEM_ID: batch[eager.POS_ITEM_ID]})
    with torch.no_grad():
        recorded.calculate_loss(batch)
        after_first = len(graphs)
        recorded.calculate_loss(other)
    assert after_first >= 1 and len(graphs) == after_first  # no second compile
    assert (len(lengths), full_width) in [shape for graph in graphs for shape in graph]
    # an epoch's last, smaller batch gets a graph of its own, with static sizes (torch.compile would otherwise
    # retrace the forward with a symbolic batch size and use that graph for every later batch); full batches
    # then go on with their first graph
    with torch.no_grad():
        recorded.calculate_loss(batch[:5])
        after_smaller = len(graphs)
        recorded.calculate_loss(batch)
    assert after_smaller > after_first and len(graphs) == after_smaller
    shapes = [shape for graph in graphs for shape in graph]
    assert (5, full_width) in shapes and "symbolic size" not in shapes


def test_a_compiled_run_trains_saves_and_reloads_through_recbole(tiny_data_path, tmp_path):
    from recbole_letter import quick_start

    from torch._dynamo.utils import counters

    config_dict = {**_tiny_tiger_config(tiny_data_path, tmp_path), "epochs": 2, "torch_compile": True,
                   "torch_compile_backend": "aot_eager"}
    graphs_before = counters["stats"]["unique_graphs"]
    result = quick_start.run("LETTER_TIGER", "ml-tiny", config_dict=config_dict)
    assert counters["stats"]["unique_graphs"] > graphs_before  # training went through the compiled forward
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    # its checkpoint (a compiled T5's weights under the T5's names) evaluates eagerly too, to the same metrics:
    # bitwise, as decoding runs the T5's modules eagerly either way (torch.compile wraps only its forward),
    # here without the CPU kernels that torch_compile turned off (with them, a float32 near-tie at a beam's
    # edge could move an item: test_t5_cpu_kernels_by_default_... compares those scores)
    again = quick_start.evaluate_checkpoint(result["checkpoint"], {"torch_compile": False, "t5_cpu_kernels": False})
    assert again["test_result"] == result["test_result"]


def test_training_benchmark_writes_its_fastest_setting_as_overrides_a_run_accepts(tiny_data_path, tmp_path,
                                                                                   capsys):
    import importlib.util
    from pathlib import Path

    import yaml

    from recbole_letter.model.letter_tiger import LETTER_TIGER
    from recbole_letter.quick_start import parse_overrides, prepare

    spec = importlib.util.spec_from_file_location("training", Path(__file__).parents[1] / "benchmarks" / "training.py")
    training = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(training)
    config_dict = {**_tiny_tiger_config(tiny_data_path, tmp_path), "train_batch_size": 32}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config_dict))
    best = tmp_path / "best.txt"
    training.main(["--dataset=ml-tiny", f"--config_files={tmp_path / 'tiny.yaml'}", "--buckets=1,2", "--amp=0",
                   "--compile=0,1", "--torch_compile_backend=aot_eager", "--batches=1", "--rounds=1", "--warmup=1",
                   f"--best_overrides={best}"])
    printed = capsys.readouterr().out
    timed = [line.split(":")[0] for line in printed.splitlines() if "s/batch" in line]
    # a compiled T5 runs whole batches: no compiled setting with 2 buckets is timed
    assert timed == ["length_buckets=1 eager", "length_buckets=1 compiled", "length_buckets=2 eager"]
    overrides = parse_overrides([f"--{pair}" for pair in best.read_text().strip().split(",")])
    assert set(overrides) <= {"length_buckets", "enable_amp", "torch_compile", "torch_compile_backend"}
    assert overrides["enable_amp"] is False and overrides["torch_compile"] == ("torch_compile_backend" in overrides)
    assert (overrides["length_buckets"], overrides["torch_compile"]) in {(1, False), (1, True), (2, False)}
    assert overrides.get("torch_compile_backend", "aot_eager") == "aot_eager"  # the backend it was timed with
    config, _, train_data, _, _ = prepare("LETTER_TIGER", "ml-tiny", config_dict={**config_dict, **overrides})
    assert LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset)).length_buckets == overrides["length_buckets"]
    base_args = ["--dataset=ml-tiny", f"--config_files={tmp_path / 'tiny.yaml'}", "--amp=0", "--rounds=1"]
    with pytest.raises(SystemExit, match="no setting to time"):  # a compiled T5 runs whole batches only
        training.main(base_args + ["--buckets=4", "--compile=1"])
    with pytest.raises(SystemExit, match=r"batches needed .* the loader has"):
        training.main(base_args + ["--buckets=1", "--batches=10000"])
    # each kind of setting, whichever won above
    assert training.setting_overrides((8, True, None, False), "t5_cpu_kernels", None, False) == {
        "length_buckets": 8, "enable_amp": True}
    assert training.setting_overrides((1, False, False, False), "t5_cpu_kernels", None, True) == {
        "length_buckets": 1, "enable_amp": False, "t5_cpu_kernels": False, "torch_compile": False}
    assert training.setting_overrides((1, True, None, "reduce-overhead"), "t5_cpu_kernels", "inductor", True) == {
        "length_buckets": 1, "enable_amp": True, "torch_compile": True, "torch_compile_mode": "reduce-overhead",
        "torch_compile_backend": "inductor"}


def test_enable_amp_autocasts_training_and_decoding(trained_tiger, tiny_data_path, tmp_path):
    config, train_data, test_data, trainer, _ = trained_tiger
    model = trainer.model.eval()
    batch, train_batch = next(iter(test_data))[0], next(iter(train_data))
    with torch.no_grad():
        exact = model.full_sort_predict(batch)
        exact_loss = model.calculate_loss(train_batch)
        model.enable_amp = True  # the config's enable_amp; decoding autocasts itself
        try:
            mixed = model.full_sort_predict(batch)
        finally:
            model.enable_amp = False
        with torch.autocast("cpu"):  # what RecBole's trainer wraps calculate_loss in under enable_amp
            mixed_loss = model.calculate_loss(train_batch)
    assert mixed.dtype == torch.float32 and (torch.isfinite(mixed).sum(1) == 12).all()
    assert not torch.isfinite(mixed[:, 0]).any()
    assert not torch.equal(mixed, exact)  # bfloat16 really ran ...
    # ... and only rounds: to bfloat16 (eps 2^-7 = 7.8e-3), not float32, so the bound is in its units, 2.5 eps
    # relative (one rounding of each matmul input moves each logit by ~eps |logit|; the loss, a mean over
    # thousands of tokens, averages them: measured 6.4e-5 on AVX-512 (AMX-free) and AVX2); a float32 error
    # is 5 orders of magnitude below and a wrong loss (scale, mask) far above
    torch.testing.assert_close(mixed_loss, exact_loss, rtol=2e-2, atol=0)
    top_exact, top_mixed = exact.topk(5).indices, mixed.topk(5).indices
    same = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top_exact, top_mixed)]
    assert sum(same) >= 0.8 * top_exact.numel()
    # and the whole run through RecBole's trainer with the switch on
    from recbole_letter import quick_start

    result = quick_start.run("LETTER_TIGER", "ml-tiny",
                             config_dict={**_tiny_tiger_config(tiny_data_path, tmp_path), "enable_amp": True})
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}


def test_amp_dtype_is_the_autocast_dtype_of_training_and_decoding(tiny_data_path, tmp_path, monkeypatch):
    """``amp_dtype`` reaches RecBole's training autocast (which has no dtype of its own: float16 on CUDA)
    and the decoder's; float16 is the one a CPU would not pick by itself. Restored after the run."""
    from recbole_letter import quick_start
    from recbole_letter.model.letter_tiger import LETTER_TIGER

    seen = {"train": set(), "decode": set()}
    code_logits, build_step_fn = LETTER_TIGER.code_logits, LETTER_TIGER.build_step_fn

    def autocast_state():
        return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def recording_code_logits(self, *args):
        if self.training:
            seen["train"].add(autocast_state())
        return code_logits(self, *args)

    def recording_build_step_fn(self, *args):
        seen["decode"].add(autocast_state())
        return build_step_fn(self, *args)

    monkeypatch.setattr(LETTER_TIGER, "code_logits", recording_code_logits)
    monkeypatch.setattr(LETTER_TIGER, "build_step_fn", recording_build_step_fn)
    config_dict = {**_tiny_tiger_config(tiny_data_path, tmp_path), "enable_amp": True, "amp_dtype": "float16",
                   "epochs": 1}
    quick_start.run("LETTER_TIGER", "ml-tiny", config_dict=config_dict)
    assert seen == {"train": {(True, torch.float16)}, "decode": {(True, torch.float16)}}
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16  # torch's own default is back
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        quick_start.run("LETTER_TIGER", "ml-tiny", config_dict={**config_dict, "amp_dtype": "float8"})


def test_chunks_decoded_in_threads_give_one_thread_s_lists(trained_tiger, monkeypatch, keep_torch_threads):
    """``decode_workers: 2``: the chunks of beam_batch_size users go to two threads sharing torch's threads; every
    chunk is decoded once, under no_grad and autocast as in the calling thread, and the lists and scores are those
    of one thread decoding the chunks in turn (each chunk's numbers do not depend on the thread, up to float32
    rounding where a product's blocking differs with the thread count)."""
    config, train_data, test_data, trainer, _ = trained_tiger
    model = trainer.model.eval()
    batch = next(iter(test_data))[0]
    n_users = len(batch[model.ITEM_SEQ])
    seen, idents = [], set()
    build_step_fn = type(model).build_step_fn

    def recording_build_step_fn(self, item_seq, *args):
        seen.append((len(item_seq), torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), torch.get_num_threads()))
        idents.add(threading.get_ident())
        time.sleep(0.05)  # long enough chunks that a second thread gets some
        return build_step_fn(self, item_seq, *args)

    monkeypatch.setattr(type(model), "build_step_fn", recording_build_step_fn)
    monkeypatch.setattr(model, "beam_batch_size", 3)  # several chunks, the last one shorter
    threads = 4  # in any test process: 2 for each of 2 decoding threads
    torch.set_num_threads(threads)
    results = {}
    for workers, amp in ((1, False), (2, False), (1, True), (2, True)):
        monkeypatch.setattr(model, "decode_workers", workers)
        monkeypatch.setattr(model, "enable_amp", amp)
        seen.clear(), idents.clear()
        with torch.enable_grad():  # generate_items turns it off, in every thread
            results[workers, amp] = model.generate_items(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
        assert sorted(size for size, *_ in seen) == sorted(len(c) for c in torch.arange(n_users).split(3))
        assert {tuple(state) for _, *state in seen} == {(False, amp, threads // workers)}
        assert len(idents) == workers and torch.get_num_threads() == threads  # restored after the threads
    # float32: each side within float32_tolerance of the exact scores, so within twice it of each other (under
    # autocast a bfloat16 rounding may differ with the blocking, and near ties with it: only its states are checked)
    (ids_one, scores_one), (ids_two, scores_two) = results[1, False], results[2, False]
    assert torch.equal(ids_one, ids_two)
    bound = 2 * float32_tolerance(scores_one, TINY_REDUCTION, TINY_STEPS * model.code_len)
    torch.testing.assert_close(scores_two, scores_one, rtol=0, atol=bound)


def test_chunks_hold_users_of_similar_history_length_the_longest_first(trained_tiger, monkeypatch):
    """generate_items decodes its users sorted by history length (little padding per chunk), the longest chunk
    first (decoding threads are not left waiting for a long chunk at the end), and returns every user's list in
    the caller's order. A stand-in search returns each user's first history item, so no float rounding enters."""
    from recbole_letter.model import generative_recommender

    config, train_data, test_data, trainer, _ = trained_tiger
    model = trainer.model.eval()
    batch = next(iter(test_data))[0]
    n_users = len(batch[model.ITEM_SEQ])
    # the tiny data's test histories are all of the longest length: cut them to 1..5 items, left-aligned as RecBole's
    assert (batch[model.ITEM_SEQ_LEN] == batch[model.ITEM_SEQ].shape[1]).all()
    item_seq_len = torch.arange(n_users) % 5 + 1
    keep = torch.arange(batch[model.ITEM_SEQ].shape[1]) < item_seq_len[:, None]
    item_seq = batch[model.ITEM_SEQ] * keep
    item_seq[:, 0] = torch.arange(1, n_users + 1)  # a first item of its own for every user
    chunk_lengths = []

    def first_items_as_step_fn(self, seq, seq_len, workspace=None):
        chunk_lengths.append(seq_len.tolist())
        return seq[:, 0]

    def search_returning_the_first_items(step_fn, trie, batch_size, beam_size, excluded=None):
        return step_fn[:, None].expand(batch_size, beam_size), torch.zeros(batch_size, beam_size)

    monkeypatch.setattr(type(model), "build_step_fn", first_items_as_step_fn)
    monkeypatch.setattr(generative_recommender, "constrained_beam_search", search_returning_the_first_items)
    monkeypatch.setattr(model, "beam_batch_size", 3)
    for workers in (1, 2):
        monkeypatch.setattr(model, "decode_workers", workers)
        chunk_lengths.clear()
        ids, _ = model.generate_items(item_seq, item_seq_len)
        assert torch.equal(ids[:, 0], item_seq[:, 0])  # each user's own, in the caller's order
        assert sorted(sum(chunk_lengths, [])) == sorted(item_seq_len.tolist())
        if workers == 1:  # in turn: the order of the chunks
            assert len(chunk_lengths) > 1
            assert all(min(longer) >= max(shorter) for longer, shorter in zip(chunk_lengths, chunk_lengths[1:]))


def test_worker_threads_take_each_task_once_and_stop_at_the_first_error(keep_torch_threads):
    from recbole_letter.model.generative_recommender import in_worker_threads

    done, threads, torch_threads = [], set(), set()
    all_started = threading.Barrier(3, timeout=30)

    def work(claimed):
        for index in claimed:
            if threading.get_ident() not in threads:
                threads.add(threading.get_ident())
                torch_threads.add(torch.get_num_threads())
                all_started.wait()  # each thread's first task waits for the other two: all three take part
            done.append(index)

    torch.set_num_threads(7)
    in_worker_threads(work, 50, 3)
    assert torch.get_num_threads() == 7
    assert sorted(done) == list(range(50)) and len(threads) == 3 and torch_threads == {2}  # 7 // 3
    done.clear(), threads.clear()
    all_started = threading.Barrier(1)
    in_worker_threads(work, 50, 1)  # one worker: a plain loop in this thread
    assert done == list(range(50)) and threads == {threading.get_ident()}

    def failing(claimed):
        for index in claimed:
            done.append(index)
            if index == 5:
                raise RuntimeError("chunk 5")
            time.sleep(0.01)

    done.clear()
    with pytest.raises(RuntimeError, match="chunk 5"):
        in_worker_threads(failing, 1000, 2)
    assert len(done) < 20 and torch.get_num_threads() == 7


def test_decode_workers_default_to_the_cpu_threads_and_to_one_on_a_gpu(keep_torch_threads):
    from types import SimpleNamespace

    from recbole_letter.model.generative_recommender import MAX_AUTO_DECODE_WORKERS, GenerativeRecommender

    def workers_on(decode_workers, device, threads=1):
        torch.set_num_threads(threads)
        return GenerativeRecommender.decode_workers_on(SimpleNamespace(decode_workers=decode_workers), device)

    # the most threads up to the cap that divide torch's threads evenly: none left idle
    found = {threads: workers_on(None, "cpu", threads) for threads in (1, 2, 3, 4, 5, 6, 16)}
    assert MAX_AUTO_DECODE_WORKERS == 4 and found == {1: 1, 2: 2, 3: 3, 4: 4, 5: 1, 6: 3, 16: 4}
    assert workers_on(None, "cuda") == 1
    assert workers_on(3, "cpu") == 3


def test_exclude_seen_items_keeps_training_items_out_of_beams_and_rankings(trained_tiger, tiny_data_path):
    from conftest import tiny_config
    from recbole_letter.model.seen_items import SeenItems
    from recbole_letter.quick_start import build_trainer, prepare

    config, train_data, test_data, trainer, _ = trained_tiger
    model = trainer.model.eval()
    dataset = train_data.dataset
    seen = SeenItems(dataset)
    # each user's training items: every target and every history item of the user's training rows
    inter = dataset.inter_feat
    users = inter[dataset.uid_field].numpy()
    expected = {}
    for user, item, history in zip(users, inter[dataset.iid_field].numpy(), inter[model.ITEM_SEQ].numpy()):
        expected.setdefault(int(user), set()).update([int(item)] + [int(i) for i in history if i])
    batch = next(iter(test_data))[0]
    batch_users = batch[model.USER_ID]
    mask = seen.mask(batch_users, batch[model.ITEM_SEQ])
    for row, user in enumerate(batch_users.tolist()):
        with_history = expected[user] | {int(i) for i in batch[model.ITEM_SEQ][row] if i}
        assert set(mask[row].nonzero().flatten().tolist()) == with_history
        assert int(batch[model.ITEM_ID][row]) not in expected[user]  # the test item was never a training item

    # the generator: beams only on unseen items, still beam_size of them
    model.seen_items = seen
    try:
        with torch.no_grad():
            scores = model.full_sort_predict(batch)
    finally:
        model.seen_items = None
    generated = torch.isfinite(scores)
    assert (generated.sum(1) == model.beam_size).all() and not (generated & mask).any()

    # any sequential model through the trainer: seen items ranked at -inf, as RecBole does for general models
    sasrec_config, _, sas_train, _, sas_test = prepare("SASRec", "ml-tiny",
                                                       config_dict=tiny_config(tiny_data_path) | {"exclude_seen_items": True})
    from recbole_letter.model import get_model_class

    sasrec = get_model_class("SASRec")(sasrec_config, sas_train.dataset)
    sas_trainer = build_trainer(sasrec_config, sasrec, sas_train.dataset)
    sas_trainer.tot_item_num = sas_test.dataset.item_num  # set by evaluate() before its batches
    batched = next(iter(sas_test))
    interaction, masked_scores, _, _ = sas_trainer._full_sort_batch_eval(batched)
    seen_rows = sas_trainer.seen_items.mask(interaction[sasrec.USER_ID], interaction[sasrec.ITEM_SEQ])
    assert torch.isinf(masked_scores[seen_rows]).all() and torch.isfinite(masked_scores[:, 1:][~seen_rows[:, 1:]]).all()


def test_a_generator_needs_codes_and_its_checkpoint_evaluates_without_the_tokenizer(trained_tiger, monkeypatch):
    """The model's constructor runs no tokenizer; ``--checkpoint`` rebuilds the model from the codes the
    checkpoint carries, so it never trains or reads a tokenizer (its hook is made to fail here)."""
    from recbole_letter import quick_start
    from recbole_letter.model.generative_recommender import GenerativeRecommender
    from recbole_letter.model.letter_tiger import LETTER_TIGER

    config, train_data, _, trainer, test_result = trained_tiger
    with pytest.raises(TypeError, match="build_model"):
        LETTER_TIGER(config, train_data.dataset, None)
    state = trainer.model.state_dict()
    codes = GenerativeRecommender.codes_from_state_dict(state)
    assert np.array_equal(codes.codes, trainer.model.item_codes.codes)

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer hook ran")

    monkeypatch.setattr(GenerativeRecommender, "tokenize", classmethod(no_tokenizer))
    monkeypatch.setitem(config.final_config_dict, "item_codes_file", None)  # nothing to read codes from either
    result = quick_start.evaluate_checkpoint(trainer.saved_model_file, {"item_codes_file": "/nonexistent.json"})
    assert result["test_result"] == pytest.approx({k: float(v) for k, v in test_result.items()})
