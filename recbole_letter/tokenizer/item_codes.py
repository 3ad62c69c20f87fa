"""ItemCodes: the item <-> code-sequence table every generative model reads.

``codes`` is an int64 array ``[n_items, n_levels]`` indexed by RecBole's internal item id; row 0 is
RecBole's padding item and holds ``-1`` everywhere (it has no code). Level ``l`` takes values in
``[0, codebook_sizes[l])``. After ``make_unique`` every real item has its own code sequence: items that
still share a full code get one extra *disambiguation* level (0, 1, 2, ... inside each shared group,
0 for every other item), so all items keep the same depth.
"""

import json
import re

import numpy as np

from recbole_letter.files import atomic_open, write_atomic

PAD_CODE = -1
_CODE_TOKEN = re.compile(r"<([a-z])_(\d+)>")


class ItemCodes:
    def __init__(self, codes, codebook_sizes=None):
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] < 2:
            raise ValueError(f"item codes must be [n_items, n_levels] with n_items >= 2, got {codes.shape}")
        if codebook_sizes is None:
            codebook_sizes = (codes[1:].max(axis=0) + 1).tolist()
        self.codes = codes
        self.codebook_sizes = [int(n) for n in codebook_sizes]
        if (codes[1:] < 0).any() or (codes[1:] >= np.asarray(self.codebook_sizes)).any():
            raise ValueError("item codes out of range of their codebook sizes")

    @property
    def n_items(self):
        return self.codes.shape[0]

    @property
    def n_levels(self):
        return self.codes.shape[1]

    # ---- collisions -------------------------------------------------------------------------
    def collision_groups(self):
        """Groups (arrays of item ids, size >= 2) of real items that share a full code sequence."""
        real = self.codes[1:]
        _, inverse, counts = np.unique(real, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(counts)[:-1]
        return [g + 1 for g in np.split(order, bounds) if len(g) > 1]

    def collision_rate(self):
        """1 - (distinct code sequences / real items): the release's definition."""
        real = self.codes[1:]
        return 1.0 - len(np.unique(real, axis=0)) / len(real)

    def make_unique(self):
        """Return codes where every real item is unique (adds a disambiguation level if needed)."""
        groups = self.collision_groups()
        if not groups:
            return self
        extra = np.zeros((self.n_items, 1), dtype=np.int64)
        extra[0] = PAD_CODE
        for group in groups:
            extra[np.sort(group), 0] = np.arange(len(group))
        size = max(len(g) for g in groups)
        return ItemCodes(np.concatenate([self.codes, extra], axis=1), self.codebook_sizes + [size])

    # ---- I/O --------------------------------------------------------------------------------
    def save(self, path):
        """Write atomically (``.npz``): a crash leaves either the old file or none, and concurrent writers
        each write a temporary file of their own."""
        codes = {"codes": self.codes, "codebook_sizes": np.asarray(self.codebook_sizes)}
        write_atomic(path, lambda tmp: np.savez(tmp, **codes), suffix=".npz")

    @classmethod
    def load(cls, path):
        with np.load(path) as f:
            return cls(f["codes"], f["codebook_sizes"].tolist())

    @classmethod
    def from_index_json(cls, path, dataset, codebook_size=None):
        """Read LETTER / LC-Rec ``*.index.json`` (``{"<item token>": ["<a_12>", "<b_3>", ...]}``).

        Keys are the dataset's raw item tokens; they are mapped to RecBole's internal ids. Every item
        of ``dataset`` must have a code; items of the file absent from the dataset (filtered out) are
        ignored.
        """
        with open(path) as f:
            index = json.load(f)
        iid_field = dataset.iid_field
        token2id = dataset.field2token_id[iid_field]
        n_levels = len(next(iter(index.values())))
        codes = np.full((dataset.item_num, n_levels), PAD_CODE, dtype=np.int64)
        for token, tokens in index.items():
            item = token2id.get(str(token))
            if item is None:
                continue
            if len(tokens) != n_levels:
                raise ValueError(f"{path}: item {token} has {len(tokens)} codes, expected {n_levels}")
            for level, code_token in enumerate(tokens):
                match = _CODE_TOKEN.fullmatch(code_token)
                if match is None:
                    raise ValueError(f"{path}: item {token}: bad code token {code_token!r}")
                codes[item, level] = int(match.group(2))
        missing = np.flatnonzero((codes[1:] < 0).any(axis=1)) + 1
        if len(missing):
            names = dataset.id2token(iid_field, missing[:5]).tolist()
            raise ValueError(f"{path}: {len(missing)} items of the dataset have no code (e.g. {names})")
        sizes = None if codebook_size is None else [int(codebook_size)] * n_levels
        return cls(codes, sizes)

    def to_index_json(self, path, dataset):
        """Write the release's ``*.index.json`` layout (keys: the dataset's raw item tokens; level ``l``'s
        code ``c`` as ``<{a+l}_{c}>``), which ``from_index_json`` and the LETTER / LC-Rec scripts read."""
        if self.n_levels > 26:
            raise ValueError(f"the index.json layout names at most 26 levels, these codes have {self.n_levels}")
        if self.n_items != dataset.item_num:
            raise ValueError(f"codes cover {self.n_items} items, the dataset has {dataset.item_num}")
        tokens = dataset.id2token(dataset.iid_field, np.arange(1, self.n_items)).tolist()
        index = {str(token): [f"<{chr(ord('a') + level)}_{code}>" for level, code in enumerate(row) if code >= 0]
                 for token, row in zip(tokens, self.codes[1:].tolist())}
        with atomic_open(path) as f:
            json.dump(index, f)
