"""Collaborative (CF) item embeddings ``h``: RecBole's SASRec trained on the training split only.

The tokenizer hook receives ``train_data.dataset``: RecBole's training split of a ``SequentialDataset``,
already augmented (one row per training target: ``item_id_list`` history -> ``item_id``; each user's
last two items, the valid and test targets, are not in it). We build a ``TrainDataLoader`` over that
dataset alone, train SASRec for ``cf_epochs`` epochs with a plain loop (no validation: the valid split
is not ours to see) and export ``item_embedding.weight`` -> ``[item_num, cf_hidden_size]``, row =
RecBole internal item id.

``cf_loss_type``: ``CE`` (RecBole's full softmax), ``BCE`` (one uniform negative, binary cross-entropy,
the release's SASRec) or ``BPR``. A user table can be given instead (``cf_emb_file``).
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F
from recbole.data.dataloader import TrainDataLoader
from recbole.model.sequential_recommender import SASRec
from recbole.sampler import Sampler
from recbole.utils import InputType
from tqdm import tqdm


class SASRecBCE(SASRec):
    """SASRec with binary cross-entropy on one sampled negative (the LETTER release's CF model)."""

    def __init__(self, config, dataset):
        config = copy.copy(config)
        config["loss_type"] = "BPR"  # SASRec accepts only BPR/CE; the pairwise inputs are the same
        super().__init__(config, dataset)
        self.loss_type = "BCE"

    def calculate_loss(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])  # [B, H]
        pos_emb = self.item_embedding(interaction[self.POS_ITEM_ID])  # [B, H]
        neg_emb = self.item_embedding(interaction[self.NEG_ITEM_ID])  # [B, H]
        pos_logit = (seq_output * pos_emb).sum(-1)
        neg_logit = (seq_output * neg_emb).sum(-1)
        return F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit)) + F.binary_cross_entropy_with_logits(
            neg_logit, torch.zeros_like(neg_logit)
        )


def cf_model_config(config):
    """A copy of ``config`` with SASRec's keys set from the ``cf_*`` keys (the generator's stay untouched)."""
    loss_type = str(config["cf_loss_type"]).upper()
    if loss_type not in ("CE", "BCE", "BPR"):
        raise ValueError(f"cf_loss_type must be CE, BCE or BPR, got {config['cf_loss_type']!r}")
    cf_config = copy.deepcopy(config)
    overrides = {
        "hidden_size": int(config["cf_hidden_size"]),
        "inner_size": int(config["cf_inner_size"]),
        "n_layers": int(config["cf_n_layers"]),
        "n_heads": int(config["cf_n_heads"]),
        "hidden_dropout_prob": float(config["cf_dropout_prob"]),
        "attn_dropout_prob": float(config["cf_dropout_prob"]),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "loss_type": loss_type,
        "train_batch_size": int(config["cf_batch_size"]),
        "MODEL_INPUT_TYPE": InputType.PAIRWISE,
        "train_neg_sample_args": {
            "distribution": "none" if loss_type == "CE" else "uniform",
            "sample_num": "none" if loss_type == "CE" else 1,
            "alpha": "none" if loss_type == "CE" else 1.0,
            "dynamic": False,
            "candidate_num": 0,
        },
        "device": torch.device("cpu") if not torch.cuda.is_available() else config["device"],
    }
    for key, value in overrides.items():
        cf_config[key] = value
    return cf_config


def build_cf_model(config, dataset):
    """An untrained SASRec (or SASRecBCE) with the ``cf_*`` hyper-parameters, on ``dataset``."""
    cf_config = cf_model_config(config)
    model_class = SASRecBCE if cf_config["loss_type"] == "BCE" else SASRec
    return model_class(cf_config, dataset).to(cf_config["device"]), cf_config


def train_cf_model(config, train_dataset):
    """Train SASRec on the training split only; returns the trained model (eval mode, CPU)."""
    model, cf_config = build_cf_model(config, train_dataset)
    sampler = None
    if cf_config["loss_type"] != "CE":
        sampler = Sampler(["train"], [train_dataset], "uniform", 1.0).set_phase("train")
    loader = TrainDataLoader(cf_config, train_dataset, sampler, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config["cf_learning_rate"]))
    device = cf_config["device"]
    model.train()
    progress = tqdm(range(int(config["cf_epochs"])), desc="SASRec (CF table)", leave=False)
    for _ in progress:
        total, batches = 0.0, 0
        for interaction in loader:
            interaction = interaction.to(device)
            optimizer.zero_grad()
            loss = model.calculate_loss(interaction)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        progress.set_postfix(loss=f"{total / max(batches, 1):.4f}")
    return model.cpu().eval()


def cf_item_table(model):
    """``[item_num, hidden]`` float32 numpy item table of a trained SASRec (row 0 = padding)."""
    table = model.item_embedding.weight.detach().cpu().numpy().astype(np.float32).copy()
    table[0] = 0.0
    return table


def load_cf_table(path, dataset):
    """A user CF table aligned to RecBole's internal item ids.

    Accepted: ``.pt`` / ``.npz`` holding ``item_id`` (raw item tokens) and ``embedding`` ``[n, d]``;
    or a plain ``.npy`` / ``.pt`` tensor ``[n, d]`` in atomic order, where row ``k`` belongs to the raw
    item token ``k`` (LETTER's numbering, used by the atomic files of ../shared/data). Every item of the
    dataset must have a row.
    """
    if str(path).endswith(".npy"):
        data = np.load(path)
    elif str(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    elif str(path).endswith(".pt"):
        data = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"cf_emb_file must end in .npy, .npz or .pt, got {path}")
    if isinstance(data, dict):
        if "item_id" not in data or "embedding" not in data:
            raise ValueError(f"{path}: a dict CF table needs keys 'item_id' and 'embedding'")
        tokens = [str(t) for t in np.asarray(data["item_id"]).tolist()]
        table = np.asarray(data["embedding"], dtype=np.float32)
    else:
        table = np.asarray(data, dtype=np.float32)
        tokens = [str(k) for k in range(len(table))]
    if table.ndim != 2 or len(table) != len(tokens):
        raise ValueError(f"{path}: CF table must be [n_items, dim] with one id per row, got {table.shape}")
    token2row = {t: r for r, t in enumerate(tokens)}
    id2token = dataset.field2id_token[dataset.iid_field]
    aligned = np.zeros((dataset.item_num, table.shape[1]), dtype=np.float32)
    missing = []
    for item in range(1, dataset.item_num):
        row = token2row.get(str(id2token[item]))
        if row is None:
            missing.append(str(id2token[item]))
        else:
            aligned[item] = table[row]
    if missing:
        raise ValueError(f"{path}: {len(missing)} items of the dataset have no CF row (e.g. {missing[:5]})")
    return aligned
