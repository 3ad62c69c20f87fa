"""Code trie and constrained beam search, against brute force on random code sets and random models."""

import itertools

import numpy as np
import pytest
import torch

from numerics import float32_tolerance
from recbole_letter.generation import CodeTrie, constrained_beam_search, item_code_token_table

PAD, EOS = 0, 1


def random_codes(rng, n_items, sizes, uneven=False):
    """Unique random codes [n_items + 1, L] (row 0 = -1); uneven: some rows end early (-1 padded)."""
    all_codes = list(itertools.product(*[range(s) for s in sizes]))
    if uneven:  # shorter codes too, but never identical to another item's full code
        all_codes += list(itertools.product(*[range(s) for s in sizes[:-1]]))
    picked = rng.choice(len(all_codes), size=n_items, replace=False)
    codes = np.full((n_items + 1, len(sizes)), -1, dtype=np.int64)
    for row, idx in enumerate(picked, start=1):
        code = all_codes[idx]
        codes[row, : len(code)] = code
    return codes


def dict_trie(tokens):
    """The release's trie: prefix tuple -> allowed next tokens."""
    allowed = {}
    for seq in tokens[1:].tolist():
        for t in range(len(seq)):
            allowed.setdefault(tuple(seq[:t]), set()).add(seq[t])
    return allowed


class FakeDecoder:
    """A random 'model' with a cache: logits depend on (user, every token so far).

    The cache is the token prefix of each row; it must be reordered by ``beam_origin``, so a beam
    search that mixes up rows produces scores that disagree with ``sequence_score``.
    """

    def __init__(self, n_users, vocab, depth, seed):
        gen = torch.Generator().manual_seed(seed)
        self.user_logits = torch.randn(n_users, vocab, generator=gen) * 3
        self.token_logits = torch.randn(depth, vocab, vocab, generator=gen) * 3
        self.n_users = n_users
        # the largest |logit|: a log-softmax rounds relative to it (a log-prob near 0 is off by eps * it)
        self.logit_bound = (self.user_logits.abs().max() + self.token_logits.abs().amax((1, 2)).sum()).item()

    def logits(self, users, prefix):  # users [R], prefix [R, t] -> [R, V]
        out = self.user_logits[users].clone()
        for j in range(prefix.shape[1]):
            out += self.token_logits[j][prefix[:, j]]
        return out

    def step_fn(self):
        state = {"users": torch.arange(self.n_users), "prefix": torch.zeros(self.n_users, 0, dtype=torch.long)}

        def step(last_tokens, beam_origin):
            if last_tokens is not None:
                state["users"] = state["users"][beam_origin]
                state["prefix"] = torch.cat([state["prefix"][beam_origin], last_tokens[:, None]], dim=1)
            return self.logits(state["users"], state["prefix"])

        return step

    def sequence_score(self, user, seq):
        """Brute force: sum of full-vocabulary log-probs of the item's tokens (pad after eos is free), exact:
        in float64 from the model's float32 logits (which the beam search gets bitwise the same: the same
        element-wise sums in the same order), so only the beam's log-softmax and sums round."""
        total, ended = 0.0, False
        for t, token in enumerate(seq):
            if not ended:
                logits = self.logits(torch.tensor([user]), torch.tensor([seq[:t]], dtype=torch.long).view(1, t))
                total += torch.log_softmax(logits[0].double(), dim=-1)[token].item()
            ended = ended or token == EOS
        return total


def test_token_table_layout_uniform_and_uneven():
    codes = np.array([[-1, -1, -1], [0, 1, 2], [1, 0, 0]])
    tokens = item_code_token_table(codes, [2, 3, 4])
    assert tokens.tolist() == [[PAD, PAD, PAD], [2, 2 + 2 + 1, 2 + 5 + 2], [3, 4, 7]]
    uneven = item_code_token_table(np.array([[-1, -1], [0, 1], [1, -1]]), [2, 2])
    assert uneven.tolist() == [[PAD, PAD, PAD], [2, 5, EOS], [3, EOS, PAD]]


@pytest.mark.parametrize("bad, message", [
    (np.array([[-1, -1], [0, 1], [-1, 1]]), "only at the end"),
    (np.array([[-1, -1], [0, 1], [-1, -1]]), "no code"),
    (np.array([[-1, -1], [0, 1], [2, 0]]), "out of range"),
])
def test_token_table_rejects_bad_codes(bad, message):
    with pytest.raises(ValueError, match=message):
        item_code_token_table(bad, [2, 2])


def test_trie_rejects_duplicate_codes():
    codes = np.array([[-1, -1], [0, 1], [0, 1]])
    with pytest.raises(ValueError, match="not unique"):
        CodeTrie(item_code_token_table(codes, [2, 2]))


@pytest.mark.parametrize("uneven", [False, True])
def test_trie_matches_dict_trie(uneven):
    rng = np.random.default_rng(0)
    tokens = item_code_token_table(random_codes(rng, 60, [4, 5, 3], uneven), [4, 5, 3])
    trie = CodeTrie(tokens)
    reference = dict_trie(tokens)
    for prefix, allowed in reference.items():
        assert trie.allowed_tokens(list(prefix)) == sorted(allowed)
    # every leaf is one distinct item, and walking an item's tokens ends at that item
    assert sorted(trie.leaf_item.tolist()) == list(range(1, 61))
    for item in (1, 17, 60):
        node = 0
        for t, token in enumerate(tokens[item].tolist()):
            row = trie.children_token[t][node].tolist()
            node = int(trie.children_node[t][node, row.index(token)])
        assert int(trie.leaf_item[node]) == item


@pytest.mark.parametrize("seed, uneven", [(0, False), (1, True), (2, False), (3, True)])
def test_beam_search_is_exact_when_beam_covers_catalogue(seed, uneven):
    """beam >= n_items never prunes: the list must be the brute-force ranking of all items."""
    rng = np.random.default_rng(seed)
    sizes = [3, 4, 3]
    n_items = 25
    tokens = item_code_token_table(random_codes(rng, n_items, sizes, uneven), sizes)
    trie = CodeTrie(tokens)
    vocab = 2 + sum(sizes)
    n_users = 4
    model = FakeDecoder(n_users, vocab, trie.depth, seed)
    item_ids, scores = constrained_beam_search(model.step_fn(), trie, n_users, beam_size=n_items + 5)
    assert item_ids.shape == (n_users, n_items + 5)
    assert (item_ids[:, n_items:] == 0).all() and torch.isinf(scores[:, n_items:]).all()
    for user in range(n_users):
        brute = np.array([model.sequence_score(user, tokens[i].tolist()) for i in range(1, n_items + 1)])
        # the beam's float32 log-softmax (over the vocabulary) and sum over the code's tokens
        tolerance = float32_tolerance(max(float(np.abs(brute).max()), model.logit_bound), vocab, trie.depth)
        assert sorted(item_ids[user, :n_items].tolist()) == list(range(1, n_items + 1))
        ranked = brute[item_ids[user, :n_items].numpy() - 1]
        # the exact ranking, but where two items' exact scores are closer than float32 can tell apart
        assert (np.diff(ranked) <= 2 * tolerance).all()
        np.testing.assert_allclose(scores[user, :n_items].numpy(), ranked, rtol=0, atol=tolerance)


@pytest.mark.parametrize("seed", range(6))
def test_beam_search_outputs_are_distinct_real_items(seed):
    """Property: random model + random code set (even and uneven) + small beam -> only real items,
    no duplicates per user, scores sorted and equal to each item's brute-force log-likelihood."""
    rng = np.random.default_rng(100 + seed)
    n_levels = int(rng.integers(1, 4))
    sizes = [int(s) for s in rng.integers(2, 6, size=n_levels)]
    capacity = int(np.prod(sizes))
    n_items = int(rng.integers(2, capacity + 1))
    tokens = item_code_token_table(random_codes(rng, n_items, sizes, uneven=bool(seed % 2 and n_levels > 1)), sizes)
    trie = CodeTrie(tokens)
    beam = int(rng.integers(1, 12))
    n_users = 3
    model = FakeDecoder(n_users, 2 + sum(sizes), trie.depth, seed)
    item_ids, scores = constrained_beam_search(model.step_fn(), trie, n_users, beam)
    assert item_ids.shape == scores.shape == (n_users, beam)
    for user in range(n_users):
        found = [(i, s) for i, s in zip(item_ids[user].tolist(), scores[user].tolist()) if s != float("-inf")]
        ids = [i for i, _ in found]
        assert len(found) == min(beam, n_items)
        assert all(1 <= i <= n_items for i in ids) and len(set(ids)) == len(ids)
        assert scores[user].tolist() == sorted(scores[user].tolist(), reverse=True)
        for item, score in found:
            exact = model.sequence_score(user, tokens[item].tolist())
            bound = float32_tolerance(max(abs(exact), model.logit_bound), 2 + sum(sizes), trie.depth)
            assert score == pytest.approx(exact, abs=bound)


@pytest.mark.parametrize("seed, uneven", [(0, False), (1, True), (2, False)])
def test_excluded_items_are_never_returned_and_cost_no_beam(seed, uneven):
    """With ``excluded``, a beam covering the catalogue returns exactly the allowed items in brute-force
    order; and a small beam returns only allowed items, as many as it has beams (no beam wasted on a
    prefix that leads only to excluded items)."""
    rng = np.random.default_rng(seed)
    sizes = [3, 4, 3]
    n_items = 25
    tokens = item_code_token_table(random_codes(rng, n_items, sizes, uneven), sizes)
    trie = CodeTrie(tokens)
    n_users = 4
    model = FakeDecoder(n_users, 2 + sum(sizes), trie.depth, seed)
    excluded = torch.from_numpy(rng.random((n_users, n_items + 1)) < 0.6)
    excluded[0, 1:] = True  # a user with nothing left gets padding items at -inf
    item_ids, scores = constrained_beam_search(model.step_fn(), trie, n_users, n_items, excluded)
    for user in range(n_users):
        allowed = [i for i in range(1, n_items + 1) if not excluded[user, i]]
        found = item_ids[user, : len(allowed)].tolist()
        assert sorted(found) == allowed
        assert (item_ids[user, len(allowed):] == 0).all() and torch.isinf(scores[user, len(allowed):]).all()
        brute = np.array([model.sequence_score(user, tokens[i].tolist()) for i in found] or [0.0])
        tolerance = float32_tolerance(max(float(np.abs(brute).max()), model.logit_bound), 2 + sum(sizes), trie.depth)
        assert (np.diff(brute) <= 2 * tolerance).all()  # the exact order, to what float32 can tell apart

    # the greedy-pruned beam: every kept beam ends in an allowed item
    small, small_scores = constrained_beam_search(FakeDecoder(n_users, 2 + sum(sizes), trie.depth, seed).step_fn(),
                                                  trie, n_users, 3, excluded)
    for user in range(1, n_users):
        n_allowed = int((~excluded[user, 1:]).sum())
        kept = [i for i, s in zip(small[user].tolist(), small_scores[user].tolist()) if s != float("-inf")]
        assert len(kept) == min(3, n_allowed) and not excluded[user, kept].any()
