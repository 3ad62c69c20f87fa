"""Batched beam search constrained by a ``CodeTrie``: every finished beam is a real item.

Interface (stable; shared by TIGER and LC-Rec)
----------------------------------------------
::

    item_ids, scores = constrained_beam_search(step_fn, trie, batch_size, beam_size)
    # item_ids LongTensor [B, beam_size]: RecBole item ids, best first, distinct within a row;
    #          0 (padding item) where fewer than beam_size items exist (score -inf there)
    # scores   FloatTensor [B, beam_size]: sum over the item's T tokens of log_softmax(logits)[token]

The model supplies ``step_fn(last_tokens, beam_origin) -> logits``; it owns its decoder state (KV
cache) and keeps it aligned with the beams:

* call 0: ``step_fn(None, None)`` -> ``[B, V]`` logits of the first code token, one row per user.
  The model encodes its input here (T5: run the encoder once; causal LM: run the prompt once) and
  feeds its start token (T5: decoder start; causal LM: the prompt's last position already predicts
  the first code token).
* call ``t`` = 1 .. T-1: ``step_fn(last_tokens [R], beam_origin [R])`` -> ``[R, V]``.
  ``beam_origin[r]`` is the row (of the previous call's ``R_prev`` rows) that beam ``r`` extends;
  the model must first reorder its state with it (``cache.reorder_cache(beam_origin)`` /
  ``index_select(0, beam_origin)``; this also expands ``B`` rows to ``B * k`` after call 0), then
  feed ``last_tokens[r]`` (the token just chosen for beam ``r``) and return the next-token logits.
* Rows are always user-major: ``R = B * k`` with the same ``k`` (beams per user) for every user,
  rows ``u * k .. u * k + k - 1`` belonging to user ``u`` and ``beam_origin`` never crossing users,
  so a model may keep per-user state (e.g. encoder keys/values) un-expanded and broadcast it.
* ``step_fn`` is called exactly ``T = trie.depth`` times (the logits after the last token are never
  needed). Logits may be any float dtype; ``V`` is the model's full vocabulary.

Scoring follows ``transformers``' beam search with ``prefix_allowed_tokens_fn``: log-softmax over the
**whole** vocabulary, then disallowed tokens removed; beam score = sum of token log-probabilities
(no length penalty: all items have ``T`` tokens; after ``eos`` the forced ``pad`` steps cost 0).
At each step every (beam, allowed token) pair is a candidate and the best ``beam_size`` survive.
Ties between equal scores are broken by ``torch.topk``'s order.

``excluded`` (optional, ``[B, n_items]`` bool) removes items per user, e.g. the items a user has seen:
a token is allowed only if some item below it is not excluded for that user, so no beam is spent on a
prefix that can only end in excluded items, and the result is the top ``beam_size`` of the allowed items
that beam search finds.
"""

import torch
import torch.nn.functional as F


@torch.no_grad()
def constrained_beam_search(step_fn, trie, batch_size, beam_size, excluded=None):
    """Top ``beam_size`` items per user by constrained beam search (see the module docstring).

    Args:
        step_fn: ``(last_tokens [R] | None, beam_origin [R] | None) -> logits [R, V]``.
        trie: ``CodeTrie`` on the device of the logits.
        batch_size: number of users ``B`` (rows of the first call).
        beam_size: beams kept per user, also the number of items returned per user.
        excluded: optional BoolTensor ``[B, n_items]``: items user ``b`` must not get.

    Returns:
        ``(item_ids LongTensor [B, beam_size], scores FloatTensor [B, beam_size])``, best first.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    device = trie.device
    users = torch.arange(batch_size, device=device)
    nodes = torch.zeros(batch_size, dtype=torch.long, device=device)  # [B * k] trie node of each beam
    scores = torch.zeros(batch_size, 1, device=device)  # [B, k]
    last_tokens = beam_origin = None
    open_nodes = None if excluded is None else trie.open_nodes(excluded.to(device))
    for t in range(trie.depth):
        logits = step_fn(last_tokens, beam_origin)
        beams_per_user = scores.shape[1]
        if logits.shape[0] != batch_size * beams_per_user:
            raise ValueError(f"step_fn returned {logits.shape[0]} rows, expected {batch_size * beams_per_user}")
        log_probs = F.log_softmax(logits.float(), dim=-1)  # [R, V]
        child_token = trie.children_token[t][nodes]  # [R, branch]
        child_node = trie.children_node[t][nodes]  # [R, branch]
        token_log_prob = log_probs.gather(1, child_token.clamp(min=0))
        if trie.forced[t] is not None:  # items that already ended: pad follows at no cost
            token_log_prob = token_log_prob.masked_fill(trie.forced[t][nodes].unsqueeze(1), 0.0)
        closed = child_token < 0
        if open_nodes is not None:  # children with no allowed item below them for this beam's user
            row_user = torch.arange(logits.shape[0], device=device) // beams_per_user
            closed = closed | ~open_nodes[t + 1][row_user.unsqueeze(1), child_node.clamp(min=0)]
        token_log_prob = token_log_prob.masked_fill(closed, float("-inf"))
        branch = child_token.shape[1]
        candidates = (scores.reshape(-1, 1) + token_log_prob).view(batch_size, beams_per_user * branch)
        n_keep = min(beam_size, candidates.shape[1])
        scores, picked = candidates.topk(n_keep, dim=1)  # [B, k'], sorted best first
        beam_origin = (users.unsqueeze(1) * beams_per_user + picked // branch).reshape(-1)
        dead = torch.isinf(scores).reshape(-1)  # fewer allowed candidates than beams
        last_tokens = child_token.view(batch_size, -1).gather(1, picked).reshape(-1)
        nodes = child_node.view(batch_size, -1).gather(1, picked).reshape(-1)
        last_tokens = last_tokens.masked_fill(dead, trie.pad_token_id)
        nodes = nodes.masked_fill(dead, 0)
    item_ids = trie.leaf_item[nodes].masked_fill(dead, 0).view(batch_size, -1)
    if item_ids.shape[1] < beam_size:  # fewer items in the catalogue than beams
        missing = beam_size - item_ids.shape[1]
        item_ids = F.pad(item_ids, (0, missing), value=0)
        scores = F.pad(scores, (0, missing), value=float("-inf"))
    return item_ids, scores
