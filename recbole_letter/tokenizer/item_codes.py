"""ItemCodes: the item <-> code-sequence table every generative model reads.

``codes`` is an int64 array ``[n_items, n_levels]`` indexed by RecBole's internal item id; row 0 is
RecBole's padding item and holds ``-1`` everywhere (it has no code). Level ``l`` takes values in
``[0, codebook_sizes[l])``. Items that share a full code are separated in one of two ways:

- ``take_free_last_codes``: every item of a shared code but the first takes a last-level code that no
  item with the same prefix uses, so all items keep ``n_levels`` codes (the tokenizer does this after its
  Sinkhorn rounds, and ``separate`` for given codes files, ``item_codes_collisions: free_last_code``);
- ``make_unique``: one extra *disambiguation* level for all items (0, 1, 2, ... inside each shared group,
  0 for every other item), so all items keep the same depth, one token longer. It separates what the
  first way cannot (a prefix with no free last-level code left).
"""

import json
from logging import getLogger

import numpy as np

from recbole_letter.common import CODE_TOKEN, LEVEL_LETTERS, code_token
from recbole_letter.files import atomic_open, write_atomic

PAD_CODE = -1
COLLISION_RULES = ("free_last_code", "extra_level")


class ItemCodes:
    """One code sequence per item (see the module docstring).

    Args:
        codes: int array ``[n_items, n_levels]`` by RecBole item id; row 0 (padding) is ignored.
        codebook_sizes: the size of each level's codebook, or ``None`` for each level's largest code + 1.

    A real item with a missing code, or a code outside its codebook, is a ``ValueError``.
    """

    def __init__(self, codes, codebook_sizes=None):
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] < 2:
            raise ValueError(f"item codes must be [n_items, n_levels] with n_items >= 2, got {codes.shape}")
        if codebook_sizes is None:
            codebook_sizes = (codes[1:].max(axis=0) + 1).tolist()
        self.codes = codes
        self.codebook_sizes = [int(n) for n in codebook_sizes]
        if len(self.codebook_sizes) != codes.shape[1]:
            raise ValueError(f"{len(self.codebook_sizes)} codebook sizes for {codes.shape[1]} levels")
        bad = np.argwhere((codes[1:] < 0) | (codes[1:] >= np.asarray(self.codebook_sizes)))
        if len(bad):
            item, level = int(bad[0][0]) + 1, int(bad[0][1])
            what = "a missing code (codes of uneven length are refused)" if codes[item, level] < 0 else "out of range"
            raise ValueError(f"item codes out of range of their codebook sizes: item {item}, level {level + 1}: "
                             f"code {codes[item, level]} is {what} for a codebook of {self.codebook_sizes[level]}")

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

    def separate(self, collisions="free_last_code"):
        """Codes where every real item is unique, and how many items were given a free last-level code.

        ``collisions``: ``free_last_code`` = ``take_free_last_codes`` with the smallest free code (a codes
        file carries no distances to rank them by), then ``make_unique`` for any group left; ``extra_level``
        = ``make_unique`` alone (one more token for every item).
        """
        if collisions not in COLLISION_RULES:
            raise ValueError(f"item_codes_collisions must be one of {', '.join(COLLISION_RULES)}, got {collisions!r}")
        if collisions == "extra_level" or not self.collision_groups():
            return self.make_unique(), 0
        codes = take_free_last_codes(self.codes, size=self.codebook_sizes[-1])
        moved = int((codes[:, -1] != self.codes[:, -1]).sum())
        return ItemCodes(codes, self.codebook_sizes).make_unique(), moved

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
        """Read what ``save`` wrote; a file of another layout is a ``ValueError`` naming it (never unpickled)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                codes, sizes = f["codes"], f["codebook_sizes"]
        except (KeyError, ValueError, OSError) as error:
            raise ValueError(f"{path}: not an item codes file (.npz with codes and codebook_sizes): {error}") from None
        if codes.dtype.kind not in "iu" or sizes.dtype.kind not in "iu" or sizes.ndim != 1:
            raise ValueError(f"{path}: codes and codebook_sizes must be integer arrays, "
                             f"got {codes.dtype} and {sizes.dtype}")
        if codes.ndim == 2 and len(sizes) != codes.shape[1]:
            raise ValueError(f"{path}: {len(sizes)} codebook sizes for {codes.shape[1]} levels")
        return cls(codes, sizes.tolist())

    @classmethod
    def from_index_json(cls, path, dataset, codebook_size=None, code_limit=None):
        """Read LETTER / LC-Rec ``*.index.json`` (``{"<item token>": ["<a_12>", "<b_3>", ...]}``).

        Keys are the dataset's raw item tokens; they are mapped to RecBole's internal ids. The file is
        checked before anything is built, each problem a ``ValueError`` naming the file and the item: an
        object of non-empty lists of code tokens, the token of level ``l`` named ``<{a+l}_{code}>``, no item
        twice, every item of ``dataset`` present, all items with the same number of levels (the decoder's
        depth; codes of uneven length are refused, not padded), every code ``< code_limit`` (the config's
        ``codebook_size``: a code of 10**9 would size a 10**9-row embedding table). Items of the file absent
        from the dataset are left out with a warning that counts them. ``codebook_size``: the size of
        every level's codebook; ``None`` = each level's largest code + 1.
        """
        index = _read_index_json(path)
        iid_field = dataset.iid_field
        token2id = dataset.field2token_id[iid_field]
        rows, extra = {}, []
        for token, tokens in index.items():
            item = token2id.get(token)
            if item is None or item == 0:  # 0: RecBole's padding token [PAD]
                extra.append(token)
            else:
                rows[item] = _parse_code_tokens(path, token, tokens, code_limit)
        missing = [item for item in range(1, dataset.item_num) if item not in rows]
        if missing:
            names = dataset.id2token(iid_field, missing[:5]).tolist()
            raise ValueError(f"{path}: {len(missing)} items of the dataset have no code (e.g. {names})")
        lengths = {}
        for item, row in rows.items():
            lengths.setdefault(len(row), []).append(item)
        if len(lengths) > 1:
            counts = ", ".join(f"{len(items):,} items have {n}" for n, items in sorted(lengths.items()))
            short = min(lengths)
            example = str(dataset.id2token(iid_field, lengths[short][0]))
            raise ValueError(f"{path}: codes of uneven length ({counts} levels; e.g. item {example!r} has {short}): "
                             "every item needs the same number of levels")  # fmt: skip
        if extra:
            getLogger().warning(f"{path}: {len(extra):,} items of the file are not in the dataset (e.g. "
                                f"{extra[:3]}); their codes are not used")  # fmt: skip
        n_levels = next(iter(lengths))
        codes = np.full((dataset.item_num, n_levels), PAD_CODE, dtype=np.int64)
        for item, row in rows.items():
            codes[item] = row
        sizes = None if codebook_size is None else [int(codebook_size)] * n_levels
        return cls(codes, sizes)

    def to_index_json(self, path, dataset):
        """Write the release's ``*.index.json`` layout (keys: the dataset's raw item tokens; level ``l``'s
        code ``c`` as ``<{a+l}_{c}>``), which ``from_index_json`` and the LETTER / LC-Rec scripts read."""
        if self.n_levels > len(LEVEL_LETTERS):
            raise ValueError(f"the index.json layout names at most {len(LEVEL_LETTERS)} levels, these codes have "
                             f"{self.n_levels}")
        if self.n_items != dataset.item_num:
            raise ValueError(f"codes cover {self.n_items} items, the dataset has {dataset.item_num}")
        tokens = dataset.id2token(dataset.iid_field, np.arange(1, self.n_items)).tolist()
        index = {str(token): [code_token(level, code) for level, code in enumerate(row) if code >= 0]
                 for token, row in zip(tokens, self.codes[1:].tolist())}
        with atomic_open(path) as f:
            json.dump(index, f)


def _read_index_json(path):
    """The file's object ``{item token: [code tokens]}``; a ``ValueError`` naming the file otherwise."""

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        twice = next((k for k in keys if keys.count(k) > 1), None) if len(set(keys)) < len(keys) else None
        if twice is not None:
            raise ValueError(f"{path}: item {twice!r} appears twice (JSON would keep only its last codes)")
        return dict(pairs)

    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path}: expected an object {{item id: [code tokens]}}, got a {type(index).__name__}")
    if not index:
        raise ValueError(f"{path}: no item codes (an empty object)")
    return index


def _parse_code_tokens(path, item, tokens, code_limit):
    """``["<a_12>", "<b_3>", ...]`` -> ``[12, 3, ...]``, checked: level letters in order, codes in range."""
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: item {item!r}: expected a list of code tokens like \"<a_12>\", "
                         f"got {json.dumps(tokens)[:60]}")  # fmt: skip
    codes = []
    for level, token in enumerate(tokens):
        match = CODE_TOKEN.fullmatch(token)
        if match is None:
            raise ValueError(f"{path}: item {item!r}: bad code token {token!r} (expected like '<a_12>')")
        letter, code = match.group(1), int(match.group(2))
        if level >= len(LEVEL_LETTERS):
            raise ValueError(f"{path}: item {item!r}: {len(tokens)} code tokens; the layout names at most "
                             f"{len(LEVEL_LETTERS)} levels")
        if letter != LEVEL_LETTERS[level]:
            raise ValueError(f"{path}: item {item!r}: code token {token!r} at level {level + 1} "
                             f"(expected '<{LEVEL_LETTERS[level]}_...>')")  # fmt: skip
        if code_limit is not None and code >= code_limit:
            raise ValueError(f"{path}: item {item!r}: code {token!r} is out of range for codebook_size {code_limit} "
                             "(codes run 0 .. codebook_size - 1; set codebook_size to the codes' own)")  # fmt: skip
        codes.append(code)
    return codes


def take_free_last_codes(codes, distances=None, size=None):
    """Separate items that share a full code on the last level: in each group (items in id order) the
    first keeps its code and every other takes the free last-level code (one that no item with the same
    prefix, the levels before the last, uses) ranked first by ``distances[item]`` (``[n_items, N]``,
    smallest first). Without ``distances``: the smallest free code below ``size`` (the last level's
    codebook size). A group whose prefix has no free code left keeps its shared code. ``codes``:
    ``[n_items, L]``, row 0 padding. Returns a new array."""
    if distances is None and size is None:
        raise ValueError("take_free_last_codes: give the distances to rank the free codes by, or the codebook size")
    codes = np.array(codes, dtype=np.int64)
    groups = ItemCodes(codes).collision_groups()
    used = {}  # prefix -> last-level codes taken under it
    for row in codes[1:]:
        used.setdefault(tuple(row[:-1]), set()).add(int(row[-1]))
    if distances is not None:
        size = distances.shape[1]
    for group in groups:
        for item in np.sort(group)[1:]:
            taken = used[tuple(codes[item, :-1])]
            ranked = range(size) if distances is None else np.argsort(distances[item], kind="stable")
            free = next((int(c) for c in ranked if int(c) not in taken), None)
            if free is not None:
                codes[item, -1] = free
                taken.add(free)
    return codes
