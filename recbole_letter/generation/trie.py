"""Prefix trie over all item code sequences, stored as per-level tensors.

A generator decodes an item as a fixed number of tokens ``T`` (its *code-token sequence*). The trie
answers, for a batch of decoding states at once, "which tokens may come next, and which state does
each lead to" with two gathers -- no per-token Python callback.

Token sequences (``item_code_token_table``)
    Level ``l`` code ``c`` is token ``first_code_token + offset_l + c`` (``offset_l`` = sum of the
    codebook sizes of the levels before ``l``). When every item has the same depth ``L``, ``T = L``
    and no end token is needed. When depths differ (codes right-padded with ``-1``), every item gets
    ``eos`` after its last code and ``pad`` after that, ``T = max depth + 1``; a shorter item can then
    be a prefix of a longer one and still be told apart.

Tensors (``CodeTrie``), for each level ``t`` in ``0..T-1`` (the nodes at level ``t`` are the distinct
``t``-token prefixes; level 0 holds the root only)::

    children_token[t]  LongTensor [n_nodes_t, branch_t]  allowed next tokens, ascending, -1 padded
    children_node[t]   LongTensor [n_nodes_t, branch_t]  node id (at level t + 1) each token leads to
    forced[t]          BoolTensor [n_nodes_t] or None    True where the item already ended (after eos):
                                                         the only child is ``pad`` and it costs 0
    leaf_item          LongTensor [n_nodes_T]            RecBole item id of each complete sequence
    parent[t]          LongTensor [n_nodes_{t+1}]        the level-``t`` node each level-``t + 1`` node hangs from

``branch_t`` is the largest number of children of a level-``t`` node, so the tables stay small even
for big codebooks (deep levels of a real code set have a handful of children per node).
"""

import numpy as np
import torch

PAD_TOKEN_ID = 0
EOS_TOKEN_ID = 1
FIRST_CODE_TOKEN = 2


def item_code_token_table(codes, codebook_sizes, first_code_token=FIRST_CODE_TOKEN,
                          eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID):
    """Item codes ``[n_items, L]`` (row 0 = padding item, ``-1`` = no code) -> tokens ``[n_items, T]``.

    Row 0 (RecBole's padding item) becomes all ``pad``. Raises on a real item with no code, on a
    ``-1`` before a code, or on a code outside its codebook.

    Args:
        codes: int array ``[n_items, L]``, item ``i``'s code at each level (``ItemCodes.codes``).
        codebook_sizes: ``L`` ints; level ``l``'s codes become tokens after those of levels ``< l``.
        first_code_token, eos_token_id, pad_token_id: the vocabulary's layout.

    Returns:
        LongTensor ``[n_items, T]``: the code tokens; when depths differ, one more column, where ``eos``
        ends each item and ``pad`` fills the rest.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[0] < 2:
        raise ValueError(f"item codes must be [n_items, n_levels] with n_items >= 2, got {codes.shape}")
    sizes = np.asarray(codebook_sizes, dtype=np.int64)
    if len(sizes) != codes.shape[1]:
        raise ValueError(f"{len(sizes)} codebook sizes for {codes.shape[1]} code levels")
    real = codes[1:]
    present = real >= 0
    depth = present.sum(axis=1)
    if (depth == 0).any():
        raise ValueError(f"{int((depth == 0).sum())} real items have no code at all")
    if (present != (np.arange(codes.shape[1])[None, :] < depth[:, None])).any():
        raise ValueError("item codes may be -1 only at the end of a row (uneven depths are right-padded)")
    if (real >= sizes[None, :]).any():
        raise ValueError("item codes out of range of their codebook sizes")
    offsets = first_code_token + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    uneven = bool((depth != codes.shape[1]).any())
    n_tokens = codes.shape[1] + int(uneven)
    tokens = np.full((codes.shape[0], n_tokens), pad_token_id, dtype=np.int64)
    tokens[1:, : codes.shape[1]] = np.where(present, real + offsets[None, :], pad_token_id)
    if uneven:
        tokens[np.arange(1, codes.shape[0]), depth] = eos_token_id
    return torch.from_numpy(tokens)


class CodeTrie:
    """Prefix trie of the item code-token sequences (see the module docstring for the tensors).

    Args:
        item_code_tokens: LongTensor ``[n_items, T]`` from ``item_code_token_table``; row 0 (the
            padding item) is ignored. Every real item's sequence must be unique.
        pad_token_id: the token that follows ``eos`` in shorter items (and fills dead beams).
    """

    def __init__(self, item_code_tokens, pad_token_id=PAD_TOKEN_ID):
        tokens = torch.as_tensor(item_code_tokens).detach().cpu().numpy().astype(np.int64)
        if tokens.ndim != 2 or tokens.shape[0] < 2:
            raise ValueError(f"item code tokens must be [n_items, T] with n_items >= 2, got {tokens.shape}")
        self.pad_token_id = int(pad_token_id)
        self.n_items = tokens.shape[0]
        self.depth = tokens.shape[1]
        seqs = tokens[1:]  # [M, T], item id = row + 1
        n_real = seqs.shape[0]
        key_base = int(seqs.max()) + 1
        node = np.zeros(n_real, dtype=np.int64)  # each item's node at the current level
        n_nodes = 1
        ended = np.zeros(1, dtype=bool)  # per node at the current level: the item already ended
        self.children_token, self.children_node, self.forced, self.parent = [], [], [], []
        for t in range(self.depth):
            key = node * key_base + seqs[:, t]
            edge_keys, child_of_item = np.unique(key, return_inverse=True)
            child_of_item = child_of_item.reshape(-1)
            parent = edge_keys // key_base
            edge_token = edge_keys % key_base
            # edges come sorted by (parent, token): position of each edge among its parent's children
            first_edge = np.searchsorted(parent, np.arange(n_nodes))
            rank = np.arange(len(edge_keys)) - first_edge[parent]
            branch = int(rank.max()) + 1
            child_token = np.full((n_nodes, branch), -1, dtype=np.int64)
            child_node = np.full((n_nodes, branch), -1, dtype=np.int64)
            child_token[parent, rank] = edge_token
            child_node[parent, rank] = np.arange(len(edge_keys))
            self.children_token.append(torch.from_numpy(child_token))
            self.children_node.append(torch.from_numpy(child_node))
            self.forced.append(torch.from_numpy(ended) if ended.any() else None)
            self.parent.append(torch.from_numpy(parent))
            # a child has ended when its parent had, or when it was reached by eos (then pad follows)
            next_ended = ended[parent].copy()
            if t + 1 < self.depth:
                after = np.zeros(len(edge_keys), dtype=bool)
                after[child_of_item] = seqs[:, t + 1] == self.pad_token_id
                next_ended |= after
            ended = next_ended
            node, n_nodes = child_of_item, len(edge_keys)
        if n_nodes != n_real:
            raise ValueError(f"item codes are not unique: {n_real} items share {n_nodes} code sequences")
        leaf_item = np.zeros(n_nodes, dtype=np.int64)
        leaf_item[node] = np.arange(1, n_real + 1)
        self.leaf_item = torch.from_numpy(leaf_item)

    @property
    def device(self):
        return self.leaf_item.device

    def to(self, device):
        """Move every table to ``device`` (in place); returns self."""
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        self.children_token = [move(x) for x in self.children_token]
        self.children_node = [move(x) for x in self.children_node]
        self.forced = [move(x) for x in self.forced]
        self.parent = [move(x) for x in self.parent]
        self.leaf_item = move(self.leaf_item)
        return self

    def open_nodes(self, excluded):
        """Which nodes still lead to an item a user may get.

        Args:
            excluded: BoolTensor ``[B, n_items]``, True where user ``b`` must not get the item.

        Returns:
            A list of ``T + 1`` BoolTensors: element ``t`` is ``[B, n_nodes_t]``, True where the node at
            level ``t`` has at least one item below it that is not excluded for that user.
        """
        open_ = [None] * (self.depth + 1)
        open_[self.depth] = ~excluded[:, self.leaf_item]
        for t in range(self.depth - 1, -1, -1):
            below = torch.zeros(excluded.shape[0], len(self.children_token[t]), dtype=torch.int32, device=excluded.device)
            open_[t] = below.index_add_(1, self.parent[t], open_[t + 1].to(torch.int32)) > 0
        return open_

    def allowed_tokens(self, prefix):
        """Allowed next tokens after the token ``prefix`` (a list; [] = start), for tests / debugging."""
        node = 0
        for t, token in enumerate(prefix):
            row = self.children_token[t][node].tolist()
            if token not in row:
                raise ValueError(f"{list(prefix)} is not a prefix of any item")
            node = int(self.children_node[t][node, row.index(token)])
        if len(prefix) == self.depth:
            return []
        return [tok for tok in self.children_token[len(prefix)][node].tolist() if tok >= 0]
