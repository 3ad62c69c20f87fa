"""Collaborative (CF) item embeddings ``h``: RecBole's SASRec trained on the training split only.

The tokenizer hook receives ``train_data.dataset``: RecBole's training split of a ``SequentialDataset``,
already augmented (one row per training target: ``item_id_list`` history -> ``item_id``; each user's
last two items, the valid and test targets, are not in it). We build a ``TrainDataLoader`` over that
dataset alone. The valid split is not ours to see, so early stopping validates on rows of the training
split itself: each user's last training target is held out (``holdout_rows``), SASRec trains on the
rest for at most ``cf_epochs`` epochs and stops after ``cf_stopping_step`` epochs without improvement
of the held-out full-softmax NDCG@10; the best epoch's ``item_embedding.weight`` is exported ->
``[item_num, cf_hidden_size]``, row = RecBole internal item id. Training saves its state after every
epoch and a rerun resumes from it (``train_cf_model``).

``cf_loss_type``: ``CE`` (RecBole's full softmax), ``BCE`` (one uniform negative, binary cross-entropy,
the release's SASRec) or ``BPR``. A user table can be given instead (``cf_emb_file``).
"""

import copy
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from recbole.data.dataloader import TrainDataLoader
from recbole.model.sequential_recommender import SASRec
from recbole.sampler import Sampler
from recbole.utils import InputType
from tqdm import tqdm

from recbole_letter.tokenizer import cache


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


def holdout_rows(train_dataset):
    """``(fit_rows, holdout_rows)`` row indices of the training split: each user's last training target
    (the latest prefix -> target row; RecBole's augmentation sorts rows by user, then time) is held out as
    the CF model's own validation, the rest is trained on. The dataset's valid/test split is never used."""
    users = train_dataset.inter_feat[train_dataset.uid_field].numpy()
    order = np.arange(len(users))
    if train_dataset.time_field in train_dataset.inter_feat:
        times = train_dataset.inter_feat[train_dataset.time_field].numpy()
        order = np.lexsort((order, times, users))  # by user, then time, then row
    else:
        order = np.lexsort((order, users))
    last = np.ones(len(order), dtype=bool)
    last[:-1] = users[order[1:]] != users[order[:-1]]
    held = np.sort(order[last])
    fit = np.setdiff1d(np.arange(len(users)), held)
    return fit, held


@torch.no_grad()
def evaluate_cf(model, dataset, rows, device, batch_size=1024, k=10):
    """Full-softmax ``{"recall@10", "ndcg@10", "loss"}`` of ``model`` on ``rows`` of ``dataset`` (one target each)."""
    was_training = model.training
    model.eval()
    hits, ndcg, loss = 0.0, 0.0, 0.0
    for first in range(0, len(rows), batch_size):
        batch = dataset.inter_feat[rows[first : first + batch_size]].to(device)
        scores = model.full_sort_predict(batch)  # [B, item_num]
        scores[:, 0] = float("-inf")  # padding
        target = batch[model.POS_ITEM_ID]
        loss += F.cross_entropy(scores, target, reduction="sum").item()
        rank = (scores > scores.gather(1, target[:, None])).sum(1)  # 0 = top
        hit = rank < k
        hits += hit.sum().item()
        ndcg += (hit.float() / torch.log2(rank.float() + 2)).sum().item()
    model.train(was_training)
    n = max(len(rows), 1)
    return {"recall@10": hits / n, "ndcg@10": ndcg / n, "loss": loss / n}


def _rng_state(loader):
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "loader": loader.generator.get_state(),
            "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
            "python": [py_version, list(py_state), py_gauss]}  # fmt: skip


def _set_rng_state(loader, state):
    torch.set_rng_state(state["torch"])
    loader.generator.set_state(state["loader"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))


def train_cf_model(config, train_dataset, partial_path=None, show_progress=True):
    """Train SASRec on the training split only; returns ``(model in eval mode on CPU, history dict)``.

    ``cf_stopping_step`` set: each user's last training target is held out (``holdout_rows``), SASRec
    trains on the other rows for at most ``cf_epochs`` epochs, is evaluated on the held-out rows after
    every epoch (``cf_valid_metric``, full softmax) and stops after ``cf_stopping_step`` epochs without
    improvement; the best epoch's weights are returned (the held-out rows were never trained on).
    ``cf_stopping_step: ~``: all rows, exactly ``cf_epochs`` epochs, no validation (the release's way).

    ``partial_path``: after every epoch the whole training state (model, optimizer, epoch, best so far,
    RNG states) is written there atomically; a call finding a valid file there resumes after its last
    epoch, and continues exactly as the uninterrupted run would have (same batches, dropout, negatives).
    """
    model, cf_config = build_cf_model(config, train_dataset)
    device = cf_config["device"]
    max_epochs = int(config["cf_epochs"])
    stopping_step = config["cf_stopping_step"]
    metric = str(config["cf_valid_metric"]).lower()  # config_check: ndcg@10, recall@10 or loss
    if stopping_step is not None:
        fit_rows, held_rows = holdout_rows(train_dataset)
        fit_dataset = train_dataset.copy(train_dataset.inter_feat[fit_rows])
    else:
        held_rows, fit_dataset = None, train_dataset
    sampler = None
    if cf_config["loss_type"] != "CE":
        sampler = Sampler(["train"], [fit_dataset], "uniform", 1.0).set_phase("train")
    loader = TrainDataLoader(cf_config, fit_dataset, sampler, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config["cf_learning_rate"]))
    history = {"epoch": [], "loss": [], "valid": [], "epoch_seconds": [], "cpu_seconds": [], "best_epoch": None, "best_valid": None, "stopped_early": False,
               "resumed_at": None, "n_fit_rows": len(fit_dataset), "n_holdout_rows": 0 if held_rows is None else len(held_rows),
               "valid_metric": metric}  # fmt: skip
    start_epoch, best_score, best_state, bad_epochs, done = 0, None, None, 0, False
    saved = cache.load_torch(partial_path) if partial_path else None
    if saved is not None and saved.get("max_epochs") == max_epochs:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        _set_rng_state(loader, saved["rng"])
        start_epoch, best_score, best_state = saved["epoch"], saved["best_score"], saved["best_model"]
        bad_epochs, done, history = saved["bad_epochs"], saved["done"], saved["history"]
        history["resumed_at"] = start_epoch + 1
        print(f"CF table: resuming at epoch {start_epoch + 1} of {max_epochs} from {partial_path}")
    better = (lambda new, old: new < old) if metric == "loss" else (lambda new, old: new > old)
    model.train()
    progress = tqdm(range(start_epoch, max_epochs), desc="SASRec (CF table)", initial=start_epoch, total=max_epochs,
                    disable=not show_progress or done, leave=False)  # fmt: skip
    for epoch in progress if not done else ():
        total, batches, epoch_start, epoch_cpu = 0.0, 0, time.perf_counter(), time.process_time()
        # the batch bar only on a terminal: in a log file a nested bar writes a line per update
        batch_bar = tqdm(loader, desc=f"epoch {epoch + 1}", disable=not (show_progress and sys.stderr.isatty()),
                         leave=False)
        for interaction in batch_bar:
            interaction = interaction.to(device)
            optimizer.zero_grad()
            loss = model.calculate_loss(interaction)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        history["epoch"].append(epoch + 1)
        history["loss"].append(total / max(batches, 1))
        postfix = {"loss": f"{total / max(batches, 1):.4f}"}
        if held_rows is not None:
            score = evaluate_cf(model, train_dataset, held_rows, device)[metric]
            history["valid"].append(score)
            if best_score is None or better(score, best_score):
                best_score, best_state, bad_epochs = score, copy.deepcopy(model.state_dict()), 0
                history["best_epoch"], history["best_valid"] = epoch + 1, score
            else:
                bad_epochs += 1
            postfix.update({metric: f"{score:.4f}", "best": f"{best_score:.4f}@{history['best_epoch']}"})
            done = bad_epochs >= int(stopping_step)
            history["stopped_early"] = done and epoch + 1 < max_epochs
        history["epoch_seconds"].append(time.perf_counter() - epoch_start)
        history["cpu_seconds"].append(time.process_time() - epoch_cpu)  # all threads; ~ wall on a quiet CPU x threads
        progress.set_postfix(postfix)
        if partial_path:
            cache.save_torch(partial_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                "max_epochs": max_epochs, "best_score": best_score, "best_model": best_state, "bad_epochs": bad_epochs,
                "done": done, "history": history, "rng": _rng_state(loader)})  # fmt: skip
        if done:
            break
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.cpu().eval(), history


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
