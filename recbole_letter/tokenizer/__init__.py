"""Item tokenizers: item text + CF signal -> unique item code sequences."""

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
        return codes.make_unique()
    return load_or_train_item_codes(config, dataset)
