"""Item tokenizers: item text + CF signal -> unique item code sequences."""

from logging import getLogger

from recbole_letter.tokenizer.item_codes import ItemCodes
from recbole_letter.tokenizer.trainer import load_or_train_item_codes


def get_item_codes(config, dataset):
    """The tokenizer hook of every generative model: item codes for ``dataset`` (the training split).

    ``item_codes_file`` (a LETTER / LC-Rec ``*.index.json``) wins when set; otherwise the LETTER
    tokenizer is trained (or read back from its cache) with the config's hyper-parameters.
    Returned codes are always unique per item.
    """
    if config["item_codes_file"]:
        # codes are checked against the codebook size (a code of 10**9 would size the embedding table)
        codes = ItemCodes.from_index_json(config["item_codes_file"], dataset, code_limit=config["codebook_size"])
        return separate_given_codes(codes, config["item_codes_file"], config["item_codes_collisions"])
    return load_or_train_item_codes(config, dataset)


def separate_given_codes(codes, path, collisions):
    """Unique codes from a codes file's (``ItemCodes.separate``), with a log line saying what changed: the
    release's files leave items of identical text sharing a code (Instruments: 48 items in 23 groups,
    Beauty: 24 in 11)."""
    groups = codes.collision_groups()
    unique, moved = codes.separate(collisions)
    if groups:
        shared = sum(len(g) for g in groups)
        how = (f"{moved} of them moved to the smallest last-level code free under their prefix"
               if collisions == "free_last_code" else "none moved")
        extra = (f"; a disambiguation level for all items ({unique.n_levels} tokens per item)"
                 if unique.n_levels > codes.n_levels else f"; {unique.n_levels} tokens per item, as in the file")
        getLogger().warning(f"{path}: {shared} items share a full code with another item ({len(groups)} groups): "
                            f"item_codes_collisions: {collisions}: {how}{extra}")
    return unique
