"""Fit the LETTER tokenizer, resolve collisions, export unique item codes; everything cached.

Cache layout under ``<checkpoint_dir>/tokenizer/`` (each stage keyed by what changes it, so e.g. a new
``alpha`` retrains the tokenizer but reuses the embeddings):

    semantic_<key>.npz     text embeddings       key: data files, item ids, text fields, encoder + its options
    cf_<key>.npz / .pt     CF table (+ SASRec)   key: data files, training interactions, cf_* keys, seed
    cf_<key>.partial.pt    CF training state after the last finished epoch (resume; removed when done)
    cf_<key>.json          CF training history (held-out validation per epoch, best epoch)
    <key>/tokenizer.pt     RQ-VAE weights        key: the two above + every tokenizer hyper-parameter + seed
    <key>/codes.npz        codes before resolution, after Sinkhorn re-coding, final unique codes
    <key>/report.json      quality report (+ PNG plots next to it)

Every file is written atomically with a sha256 side file; a missing side file, a mismatch or an
unreadable file means "rebuild".
"""

import copy
import glob
import json
import logging
import os
import time

import numpy as np
import torch
from recbole.utils import init_seed
from tqdm import tqdm

from recbole_letter.tokenizer import cache, cf_embedding
from recbole_letter.tokenizer.item_codes import PAD_CODE, ItemCodes, take_free_last_codes
from recbole_letter.tokenizer.losses import DiversityClusters, collaborative_loss, diversity_loss, semantic_loss
from recbole_letter.tokenizer.report import tokenizer_report
from recbole_letter.tokenizer.rqvae import RQVAE
from recbole_letter.tokenizer.text_encoder import check_item_texts, item_semantic_embeddings, item_texts

logger = logging.getLogger(__name__)

TOKENIZER_KEYS = (
    "tokenizer_encoder_layers", "code_dim", "num_levels", "codebook_size", "tokenizer_commitment_weight",
    "alpha", "beta", "div_num_clusters", "div_cluster_size_min", "div_cluster_size_max", "div_cluster_interval",
    "sinkhorn_epsilon", "sinkhorn_iters", "tokenizer_epochs", "tokenizer_lr", "tokenizer_weight_decay",
    "tokenizer_lr_scheduler", "tokenizer_batch_size", "tokenizer_init_samples", "tokenizer_eval_interval",
    "tokenizer_stop_collision_rate", "max_resolve_rounds", "tokenizer_reseed_dead_codes",
    "tokenizer_warmup_ratio",
)  # fmt: skip
CF_KEYS = ("cf_loss_type", "cf_hidden_size", "cf_inner_size", "cf_n_layers", "cf_n_heads", "cf_dropout_prob",
           "cf_epochs", "cf_learning_rate", "cf_batch_size", "MAX_ITEM_LIST_LENGTH", "cf_stopping_step",
           "cf_valid_metric")  # fmt: skip
TEXT_KEYS = ("text_fields", "text_encoder", "encode_fields_separately", "text_encoder_max_length", "text_encoder_dtype")


# ---- cache keys ------------------------------------------------------------------------------
def _data_fingerprint(config, dataset):
    """Hashes of the dataset's atomic files and of the item id mapping (covers filtering/remapping)."""
    files = sorted(glob.glob(os.path.join(config["data_path"], f"{config['dataset']}.*")))
    file_hashes = {os.path.basename(f): cache.file_sha256(f) for f in files if os.path.isfile(f)}
    item_tokens = np.asarray(dataset.field2id_token[dataset.iid_field]).astype(str)
    return [file_hashes, cache.stable_hash(item_tokens)]


def _train_fingerprint(dataset):
    """Hash of the training interactions the CF model sees."""
    inter = dataset.inter_feat
    return cache.stable_hash(inter[dataset.uid_field].numpy(), inter[dataset.iid_field].numpy())


# how assign_codes turns a trained tokenizer into codes; part of the cache key, so cached codes made another way
# are not reused
CODE_ASSIGNMENT = "sinkhorn rounds, then the nearest free last-level code"
# the learning-rate schedule the RQ-VAE trains with, part of the key for the same reason (it was our own
# warm-up, one step ahead of transformers' during warm-up)
LR_SCHEDULE = "transformers schedule with warmup"


def cache_keys(config, dataset):
    """``{'semantic': ..., 'cf': ..., 'tokenizer': ...}`` hex keys for the three cached stages."""
    data = _data_fingerprint(config, dataset)
    semantic = cache.stable_hash("semantic", data, {k: config[k] for k in TEXT_KEYS})
    if config["cf_emb_file"]:
        cf = cache.stable_hash("cf_file", data, cache.file_sha256(config["cf_emb_file"]))
    else:
        cf = cache.stable_hash("cf", data, _train_fingerprint(dataset), {k: config[k] for k in CF_KEYS}, config["seed"])
    tokenizer = cache.stable_hash("tokenizer", CODE_ASSIGNMENT, LR_SCHEDULE, semantic, cf,
                                  {k: config[k] for k in TOKENIZER_KEYS}, config["seed"])
    return {"semantic": semantic, "cf": cf, "tokenizer": tokenizer}


def cache_root(config):
    return os.path.join(config["checkpoint_dir"], "tokenizer")


# ---- the cached stages -----------------------------------------------------------------------
def load_or_compute_semantic_emb(config, dataset, key, check_texts=True):
    path = os.path.join(cache_root(config), f"semantic_{key}.npz")
    cached = cache.load_arrays(path)
    if cached is not None and cached["semantic_emb"].shape[0] == dataset.item_num:
        return cached["semantic_emb"], 0.0
    start = time.perf_counter()
    semantic_emb = item_semantic_embeddings(config, dataset, check_texts)
    seconds = time.perf_counter() - start
    cache.save_arrays(path, semantic_emb=semantic_emb)
    return semantic_emb, seconds


def load_or_train_cf(config, dataset, key, show_progress=None):
    """``(cf_table [item_num, d], sasrec_model or None, seconds)``.

    Training writes ``cf_<key>.partial.pt`` after every epoch; a rerun with the same key resumes from it
    (``cf_embedding.train_cf_model``); the partial file is removed once ``cf_<key>.npz`` / ``.pt`` exist.
    The training history (validation per epoch, best epoch) goes to ``cf_<key>.json``.
    """
    path = os.path.join(cache_root(config), f"cf_{key}.npz")
    if config["cf_emb_file"]:
        return cf_embedding.load_cf_table(config["cf_emb_file"], dataset), None, 0.0
    model_path = os.path.join(cache_root(config), f"cf_{key}.pt")
    partial_path = os.path.join(cache_root(config), f"cf_{key}.partial.pt")
    cached, state = cache.load_arrays(path), cache.load_torch(model_path)
    if cached is not None and state is not None and cached["cf_emb"].shape[0] == dataset.item_num:
        model, _ = cf_embedding.build_cf_model(config, dataset)
        model.load_state_dict(state)
        return cached["cf_emb"], model.cpu().eval(), 0.0
    init_seed(config["seed"], True)
    if show_progress is None:
        show_progress = config["show_progress"] is not False
    start = time.perf_counter()
    model, history = cf_embedding.train_cf_model(config, dataset, partial_path=partial_path, show_progress=show_progress)
    seconds = time.perf_counter() - start
    cf_emb = cf_embedding.cf_item_table(model)
    cache.save_torch(model_path, model.state_dict())
    cache.save_arrays(path, cf_emb=cf_emb)
    cache.save_json(os.path.join(cache_root(config), f"cf_{key}.json"), dict(history, seconds=seconds))
    cache.remove(partial_path)
    return cf_emb, model, seconds


def build_tokenizer(config, input_dim):
    return RQVAE(
        input_dim=input_dim,
        hidden_layers=config["tokenizer_encoder_layers"],
        code_dim=int(config["code_dim"]),
        num_levels=int(config["num_levels"]),
        codebook_size=int(config["codebook_size"]),
        sinkhorn_epsilon=float(config["sinkhorn_epsilon"]),
        sinkhorn_iters=int(config["sinkhorn_iters"]),
        commitment_weight=float(config["tokenizer_commitment_weight"]),
    )


# ---- training --------------------------------------------------------------------------------
def train_tokenizer(config, semantic_emb, cf_emb, show_progress=True):
    """Fit the RQ-VAE with L_sem + alpha L_CF + beta L_div on all real items (rows 1..).

    Args:
        config: the tokenizer's keys (``properties/tokenizer.yaml``).
        semantic_emb: float array ``[n_items, d_text]``, row 0 the padding item.
        cf_emb: float array ``[n_items, d_cf]``, L_CF's collaborative targets, row 0 the padding item.
        show_progress: a bar with the time left.

    Returns:
        ``(model, history)``: the RQ-VAE with the weights of the lowest collision rate seen at an evaluation
        (ties: the later one), as the release selects its checkpoint, and the per-epoch losses and rates.
    """
    alpha, beta = float(config["alpha"]), float(config["beta"])
    semantic = torch.from_numpy(semantic_emb[1:]).float()  # [n, D]
    cf = torch.from_numpy(cf_emb[1:]).float()  # [n, d_cf]
    if alpha > 0 and cf.shape[1] != int(config["code_dim"]):
        raise ValueError(f"alpha > 0 needs cf_hidden_size == code_dim, got {cf.shape[1]} and {config['code_dim']}")
    n_items, seed = len(semantic), int(config["seed"])
    init_seed(seed, True)
    generator = torch.Generator().manual_seed(seed)
    model = build_tokenizer(config, semantic.shape[1])

    # Codebooks: balanced k-means on the untrained encoder's output of a random sample of items.
    n_init = min(int(config["tokenizer_init_samples"]), n_items)
    init_rows = torch.randperm(n_items, generator=generator)[:n_init]
    with torch.no_grad():
        model.quantizer.init_codebooks(model.encoder(semantic[init_rows]), seed)

    epochs, batch_size = int(config["tokenizer_epochs"]), int(config["tokenizer_batch_size"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config["tokenizer_lr"]),
                                  weight_decay=float(config["tokenizer_weight_decay"]))  # fmt: skip
    steps_per_epoch = (n_items + batch_size - 1) // batch_size
    warmup_steps = int(float(config["tokenizer_warmup_ratio"]) * epochs * steps_per_epoch)
    scheduler = _scheduler(optimizer, config["tokenizer_lr_scheduler"], epochs * steps_per_epoch, warmup_steps)
    eval_interval = max(1, int(config["tokenizer_eval_interval"]))
    stop_rate = config["tokenizer_stop_collision_rate"]
    cluster_interval = max(1, int(config["div_cluster_interval"]))
    history = {"epoch": [], "loss": [], "collision_rate": [], "seconds_forward_backward": 0.0,
               "seconds_clustering": 0.0, "seconds_sinkhorn": 0.0, "seconds_eval": 0.0, "epochs_run": 0}  # fmt: skip
    reseed = bool(config["tokenizer_reseed_dead_codes"])
    n_levels, n_codes = int(config["num_levels"]), int(config["codebook_size"])
    history["codes_reseeded"] = []
    best_rate, best_state, clusters = float("inf"), None, None
    progress = tqdm(range(epochs), desc="LETTER tokenizer", disable=not show_progress, leave=False)
    for epoch in progress:
        model.train()
        if beta > 0 and epoch % cluster_interval == 0:
            start = time.perf_counter()
            clusters = DiversityClusters(model.quantizer.codebooks, int(config["div_num_clusters"]),
                                         int(config["div_cluster_size_min"]), int(config["div_cluster_size_max"]), seed + epoch)  # fmt: skip
            history["seconds_clustering"] += time.perf_counter() - start
        start, sinkhorn_before = time.perf_counter(), model.quantizer.sinkhorn_seconds
        order, epoch_loss = torch.randperm(n_items, generator=generator), 0.0
        counts = torch.zeros(n_levels, n_codes, dtype=torch.long)  # [L, N] picks this epoch
        for first in range(0, n_items, batch_size):
            rows = order[first : first + batch_size]
            out = model(semantic[rows], use_sinkhorn=True)
            loss = semantic_loss(semantic[rows], out["s_hat"], out["quant_loss"])
            if alpha > 0:
                loss = loss + alpha * collaborative_loss(out["z_hat"], cf[rows])
            if beta > 0:
                loss = loss + beta * diversity_loss(out["picked"], model.quantizer.codebooks, out["codes"], clusters, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.item() * len(rows)
            if reseed:
                counts += torch.stack([torch.bincount(c, minlength=n_codes) for c in out["codes"].T])
        if reseed and epoch + 1 < epochs:
            history["codes_reseeded"].append(model.quantizer.reseed_dead_codes(counts, out["residuals"], generator, optimizer))
        sinkhorn = model.quantizer.sinkhorn_seconds - sinkhorn_before
        history["seconds_sinkhorn"] += sinkhorn
        history["seconds_forward_backward"] += time.perf_counter() - start - sinkhorn
        history["epochs_run"] = epoch + 1
        if (epoch + 1) % eval_interval == 0 or epoch + 1 == epochs:
            start = time.perf_counter()
            model.eval()
            codes, _ = model.encode_codes(semantic, use_sinkhorn=False)
            rate = 1.0 - len(torch.unique(codes, dim=0)) / n_items
            history["seconds_eval"] += time.perf_counter() - start
            history["epoch"].append(epoch + 1)
            history["loss"].append(epoch_loss / n_items)
            history["collision_rate"].append(rate)
            progress.set_postfix(loss=f"{epoch_loss / n_items:.4f}", collision=f"{rate:.4f}")
            if rate <= best_rate:
                best_rate, best_state = rate, copy.deepcopy(model.state_dict())
            if stop_rate is not None and rate <= float(stop_rate):
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history["best_collision_rate"] = best_rate
    return model, history


def _scheduler(optimizer, name, total_steps, warmup_steps=0):
    """transformers' per-step schedule: linear warm-up over ``warmup_steps``, then constant or cosine to 0."""
    # transformers is imported where used: importing this module (every run does) stays cheap
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if name in (None, "constant", "none"):
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    raise ValueError(f"tokenizer_lr_scheduler must be constant or cosine, got {name!r}")


# ---- codes -----------------------------------------------------------------------------------
@torch.no_grad()
def assign_codes(model, semantic_emb, max_resolve_rounds):
    """Codes before resolution, after Sinkhorn re-coding of colliding groups, and z_hat (all ``[item_num, .]``).

    Each round re-codes the last level of every group of items that share a full code, with Sinkhorn over
    the group (balanced, so near-identical items are pushed to different codes). Sinkhorn cannot separate
    identical inputs (e.g. two items with the same text): after the rounds, every item of a group but the
    first takes the nearest last-level code that no item with its prefix uses (``take_free_last_codes``),
    so all items keep ``num_levels`` codes. ``ItemCodes.make_unique`` adds a level only for a group whose
    prefix has no free code left.
    """
    semantic = torch.from_numpy(semantic_emb[1:]).float()
    codes, z_hat = model.encode_codes(semantic, use_sinkhorn=False)
    before = _with_padding(codes.numpy())
    resolved = before.copy()
    use_sinkhorn = model.quantizer.sinkhorn_epsilon > 0
    for _ in range(int(max_resolve_rounds) if use_sinkhorn else 0):
        groups = ItemCodes(resolved).collision_groups()
        if not groups:
            break
        for group in groups:
            group_codes, _ = model.encode_codes(semantic[group - 1], use_sinkhorn=True)
            resolved[group, -1] = group_codes[:, -1].numpy()
    if max_resolve_rounds and ItemCodes(resolved).collision_groups():
        last_residual = model(semantic, use_sinkhorn=False)["residuals"][:, -1]  # [n, d]: the last level's input
        distances = torch.cdist(last_residual, model.quantizer.codebooks[-1]).pow(2).numpy()  # [n, N]
        resolved = take_free_last_codes(resolved, np.concatenate([np.zeros_like(distances[:1]), distances]))  # row 0: padding
    z_hat_table = np.zeros((len(semantic_emb), z_hat.shape[1]), dtype=np.float32)
    z_hat_table[1:] = z_hat.numpy()
    return before, resolved, z_hat_table


def _with_padding(codes):
    return np.concatenate([np.full((1, codes.shape[1]), PAD_CODE, dtype=np.int64), codes.astype(np.int64)])


# ---- entry points ----------------------------------------------------------------------------
def load_or_train_item_codes(config, dataset, return_artifacts=False):
    """Unique ``ItemCodes`` for ``dataset`` (the training split), trained or read back from the cache.

    Args:
        config: the run's config (the tokenizer's keys are its cache key).
        dataset: the training split.
        return_artifacts: also return what the report needs.

    Returns:
        ``ItemCodes``; with ``return_artifacts`` ``(ItemCodes, dict)``, the dict holding the semantic / CF /
        z_hat tables, the codes before and after resolution, the CF model, the training history, timings
        and the cache folder.
    """
    # the empty-text check before any cache lookup: a hit must not skip it (allow_empty_text is not in the keys)
    text_fields = list(config["text_fields"] or [])
    check_item_texts(dataset, text_fields, item_texts(dataset, text_fields), bool(config["allow_empty_text"]),
                     bool(config["encode_fields_separately"]), logger=logger)
    keys = cache_keys(config, dataset)
    root = cache_root(config)
    run_dir = os.path.join(root, keys["tokenizer"])
    os.makedirs(run_dir, exist_ok=True)
    codebook_sizes = [int(config["codebook_size"])] * int(config["num_levels"])
    codes_path = os.path.join(run_dir, "codes.npz")
    cached = cache.load_arrays(codes_path)
    if cached is not None and cached["final"].shape[0] == dataset.item_num and not return_artifacts:
        logger.info(f"item codes read from the cache: {codes_path}")
        return ItemCodes(cached["final"], cached["final_codebook_sizes"].tolist())

    timings = {}
    semantic_emb, timings["seconds_semantic_emb"] = load_or_compute_semantic_emb(config, dataset, keys["semantic"],
                                                                                check_texts=False)  # checked above
    cf_emb, cf_model, timings["seconds_cf_table"] = load_or_train_cf(config, dataset, keys["cf"])
    model_path = os.path.join(run_dir, "tokenizer.pt")
    state, history = cache.load_torch(model_path), None
    model = build_tokenizer(config, semantic_emb.shape[1])
    if state is not None:
        model.load_state_dict(state)
        model.eval()
        timings["seconds_tokenizer"] = 0.0
    else:
        start = time.perf_counter()
        model, history = train_tokenizer(config, semantic_emb, cf_emb, show_progress=config["show_progress"] is not False)
        timings["seconds_tokenizer"] = time.perf_counter() - start
        history["seconds_total"] = timings["seconds_tokenizer"]
        cache.save_torch(model_path, model.state_dict())
        cache.save_json(os.path.join(run_dir, "history.json"), history)
    if cached is not None and cached["final"].shape[0] == dataset.item_num:
        before, resolved, final = cached["before"], cached["resolved"], ItemCodes(cached["final"], cached["final_codebook_sizes"].tolist())
        _, _, z_hat = assign_codes(model, semantic_emb, 0)
        timings["seconds_resolve"] = 0.0
    else:
        start = time.perf_counter()
        before, resolved, z_hat = assign_codes(model, semantic_emb, config["max_resolve_rounds"])
        final = ItemCodes(resolved, codebook_sizes).make_unique()
        timings["seconds_resolve"] = time.perf_counter() - start
        logger.info(f"item codes built ({final.n_levels} levels, {sum(timings.values()):.1f} s): {codes_path}")
        cache.save_arrays(codes_path, before=before, resolved=resolved, final=final.codes,
                          final_codebook_sizes=np.asarray(final.codebook_sizes))  # fmt: skip
        # wall seconds of the stages this call computed (0 = read from the cache), for later reports
        cache.save_json(os.path.join(run_dir, "timings.json"), dict(timings, loadavg=list(os.getloadavg())))
    if not return_artifacts:
        return final
    if history is None and os.path.isfile(os.path.join(run_dir, "history.json")):
        with open(os.path.join(run_dir, "history.json")) as f:
            history = json.load(f)
    artifacts = dict(semantic_emb=semantic_emb, cf_emb=cf_emb, cf_model=cf_model, z_hat=z_hat,
                     before=ItemCodes(before, codebook_sizes), resolved=ItemCodes(resolved, codebook_sizes),
                     final=final, history=history, timings=timings, run_dir=run_dir, keys=keys)  # fmt: skip
    return final, artifacts


def tokenize_only(config, train_dataset, eval_data=None):
    """Train (or reuse) the tokenizer, write its quality report and the final codes as
    ``<run_dir>/codes.index.json``, print the table and both paths. With ``item_codes_file`` set, the
    report is of those codes instead (:func:`report_for_index_json`).

    Args:
        config: the run's config (tokenizer keys, ``checkpoint_dir`` for the cache).
        train_dataset: the training split.
        eval_data: optional RecBole full-sort eval loader (e.g. ``valid_data``) for the Table-3 ranking
            check; without it the check ranks each user's last *training* target.

    Returns:
        dict: the report.
    """
    if config["item_codes_file"]:
        return report_for_index_json(config, train_dataset, config["item_codes_file"], eval_data=eval_data)
    _, artifacts = load_or_train_item_codes(config, train_dataset, return_artifacts=True)
    # the final codes in the release's layout, for item_codes_file or the LETTER / LC-Rec scripts
    index_json = os.path.join(artifacts["run_dir"], "codes.index.json")
    artifacts["final"].to_index_json(index_json, train_dataset)
    report = tokenizer_report(
        train_dataset,
        before=artifacts["before"],
        resolved=artifacts["resolved"],
        final=artifacts["final"],
        cf_emb=artifacts["cf_emb"],
        z_hat=artifacts["z_hat"],
        cf_model=artifacts["cf_model"],
        eval_data=eval_data,
        out_dir=artifacts["run_dir"],
        extra={"timings": artifacts["timings"], "history": artifacts["history"], "cache_keys": artifacts["keys"],
               "index_json": index_json},
    )
    print(f"item codes (index.json, usable as item_codes_file): {index_json}")
    return report


def report_for_index_json(config, train_dataset, item_codes_file, out_dir=None, eval_data=None):
    """The same report for released codes (``*.index.json``); CF checks use this config's CF table."""
    codes = ItemCodes.from_index_json(item_codes_file, train_dataset, code_limit=config["codebook_size"])
    final, _ = codes.separate(config["item_codes_collisions"])
    cf_emb, cf_model, _ = load_or_train_cf(config, train_dataset, cache_keys(config, train_dataset)["cf"])
    name = os.path.basename(item_codes_file).replace(".json", "")
    out_dir = out_dir or os.path.join(cache_root(config), f"released_{name}")
    return tokenizer_report(train_dataset, codes, codes, final, cf_emb=cf_emb, cf_model=cf_model,
                            eval_data=eval_data, out_dir=out_dir, title=f"released {name}")  # fmt: skip
