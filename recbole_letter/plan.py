"""What a run will do, printed before it does it: its stages, their sizes, a time estimate for each
from a short probe on the real data, and what the cache already holds.

A probe times a few steps of a stage (the first step is a warm-up and is not counted) and scales the
mean to the stage's size. Estimates are upper bounds where early stopping may end a stage sooner, and
they are taken on the machine as loaded at probe time. The probes leave every random stream and every
weight as they found them, so a run with the plan trains exactly as one without it.
"""

import copy
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from recbole.data.dataloader import TrainDataLoader
from recbole.sampler import Sampler
from recbole.trainer import TraditionalTrainer
from recbole.utils import get_trainer

from recbole_letter.common import amp_dtype
from recbole_letter.model import is_generative
from recbole_letter.tokenizer import cf_embedding
from recbole_letter.tokenizer import trainer as tok
from recbole_letter.tokenizer.item_codes import PAD_CODE, ItemCodes
from recbole_letter.tokenizer.losses import collaborative_loss, semantic_loss
from recbole_letter.tokenizer.text_encoder import encode_texts, item_texts, load_encoder, resolve_encoder_path
from recbole_letter.trainer import backward_parts, batch_to_device, random_state, set_random_state

PROBE_STEPS = 4  # timed steps per probe (after one warm-up step) ...
PROBE_SECONDS = 8.0  # ... or fewer, once a probe has spent this long (a release-size T5 step takes seconds)


@dataclass
class Stage:
    name: str
    size: str  # what the stage runs over, in words
    seconds: float | None = None  # the estimate; None when not probed
    status: str = "to run"  # "cached", "to run", "given"


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, n_steps, steps=PROBE_STEPS, max_seconds=PROBE_SECONDS, device="cpu"):
    """Mean seconds of ``step()`` over up to ``steps`` calls after one untimed warm-up call, stopping
    early once ``max_seconds`` have passed; at most ``n_steps`` calls in all (the stage's own size)."""
    times, begin = [], time.perf_counter()
    for i in range(min(n_steps, steps + 1)):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        if i or n_steps == 1:
            times.append(time.perf_counter() - start)
        if time.perf_counter() - begin > max_seconds and times:
            break
    if not times:  # the warm-up alone exceeded the budget: use it
        times.append(time.perf_counter() - begin)
    return sum(times) / len(times)


def timed_train_step(model, interaction, optimizer, amp=None):
    """Seconds of one optimiser step as ``LetterTrainer`` runs it (a backward pass per loss part for
    models with ``loss_chunks``), device work included. ``amp``: a torch dtype to autocast to, or None."""
    device = next(model.parameters()).device
    _sync(device)
    start = time.perf_counter()
    optimizer.zero_grad()

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    if hasattr(model, "loss_chunks"):
        backward_parts(model.loss_chunks(interaction), autocast)
    else:
        with autocast():
            losses = model.calculate_loss(interaction)
        (sum(losses) if isinstance(losses, tuple) else losses).backward()
    optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def probe_epoch_seconds(config, model, train_data, valid_data, steps=PROBE_STEPS, max_seconds=PROBE_SECONDS):
    """``(train_epoch_seconds, valid_pass_seconds)`` of ``model`` on these loaders, from a few timed
    training batches and validation batches. Weights and every random stream the probe draws from
    (dropout, the loader's shuffle) are restored afterwards."""
    streams = random_state(config["device"], getattr(train_data, "generator", None))
    state = copy.deepcopy(model.state_dict())
    try:
        return _probe(config, model, train_data, valid_data, steps, max_seconds)
    finally:
        model.load_state_dict(state)
        set_random_state(streams, config["device"], getattr(train_data, "generator", None))


def _probe(config, model, train_data, valid_data, steps, max_seconds):
    device = config["device"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    batches_per_epoch = min(len(train_data), config["train_batches_per_epoch"] or len(train_data))
    train_epoch = 0.0
    if trainable and len(train_data):  # Pop and other models without parameters to train
        optimizer = torch.optim.AdamW(trainable, lr=1e-12)
        amp = amp_dtype(config) if config["enable_amp"] else None
        model.train()
        batches = iter(train_data)
        step_seconds = time_steps(
            lambda: timed_train_step(model, batch_to_device(model, next(batches), device), optimizer, amp),
            len(train_data), steps, max_seconds, device,
        )
        train_epoch = step_seconds * batches_per_epoch
    model.eval()
    valid_batches = iter(valid_data)
    with torch.no_grad():
        batch_seconds = time_steps(lambda: model.full_sort_predict(next(valid_batches)[0].to(device)),
                                   len(valid_data), min(steps, 2), max_seconds, device)
    return train_epoch, batch_seconds * len(valid_data)


# ---- the stages of a run -----------------------------------------------------------------------
def tokenizer_stages(config, train_dataset):
    """The tokenizer's stages (text embeddings, CF table, RQ-VAE), each with its cache status and, when
    it has to run, a probe's estimate."""
    n_items = train_dataset.item_num - 1
    if config["item_codes_file"]:
        return [Stage("item codes", f"{n_items:,} items from {config['item_codes_file']}", 0.0, "given")]
    keys = tok.cache_keys(config, train_dataset)
    root = tok.cache_root(config)
    codes_cached = tok.cache.load_arrays(os.path.join(root, keys["tokenizer"], "codes.npz")) is not None
    semantic_cached = codes_cached or os.path.isfile(os.path.join(root, f"semantic_{keys['semantic']}.npz"))
    cf_cached = codes_cached or bool(config["cf_emb_file"]) or os.path.isfile(os.path.join(root, f"cf_{keys['cf']}.npz"))
    fields = ", ".join(config["text_fields"] or [])
    epochs, batch = int(config["tokenizer_epochs"]), int(config["tokenizer_batch_size"])
    tokenizer_steps = epochs * -(-n_items // batch)
    stages = [
        Stage("text embeddings", f"{n_items:,} items x [{fields}], {config['text_encoder']}", 0.0,
              "cached" if semantic_cached else "to run"),
        Stage("CF table (SASRec)", "given file" if config["cf_emb_file"] else
              f"<= {int(config['cf_epochs'])} epochs on the training split", 0.0, "cached" if cf_cached else "to run"),
        Stage("tokenizer (RQ-VAE)", f"{epochs} epochs x {-(-n_items // batch)} batches of {batch} items",
              0.0, "cached" if codes_cached else "to run"),
    ]
    streams = random_state(torch.device("cpu"))
    try:
        if not semantic_cached:
            stages[0].seconds = _probe_text(config, train_dataset)
        if not cf_cached:
            stages[1].seconds, stages[1].size = _probe_cf(config, train_dataset)
        if not codes_cached:
            stages[2].seconds = tokenizer_steps * _probe_tokenizer(config, train_dataset)
    finally:
        set_random_state(streams, torch.device("cpu"))
    return stages


def _probe_text(config, dataset, sample=64):
    """Seconds to encode every item's text: the encoder's load plus a timed batch per field, scaled."""
    device = config["text_encoder_device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = item_texts(dataset, list(config["text_fields"] or []))
    start = time.perf_counter()
    encoder = load_encoder(resolve_encoder_path(config["text_encoder"]), config["text_encoder_dtype"], device)
    load = time.perf_counter() - start
    n = min(sample, dataset.item_num - 1)
    start = time.perf_counter()
    for field_texts in texts:
        encode_texts(field_texts[1 : n + 1], None, batch_size=int(config["text_encoder_batch_size"]),
                     device=device, max_length=int(config["text_encoder_max_length"]), desc=None,
                     encoder=encoder)
    return load + (time.perf_counter() - start) * (dataset.item_num - 1) / max(1, n)


def _probe_cf(config, dataset):
    """``(seconds for cf_epochs epochs, size text)`` of the CF SASRec, from a few timed batches."""
    model, cf_config = cf_embedding.build_cf_model(config, dataset)
    sampler = None
    if cf_config["loss_type"] != "CE":
        sampler = Sampler(["train"], [dataset], "uniform", 1.0).set_phase("train")
    loader = TrainDataLoader(cf_config, dataset, sampler, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-12)
    batches = iter(loader)
    model.train()
    step = time_steps(lambda: timed_train_step(model, next(batches).to(cf_config["device"]), optimizer),
                      len(loader), device=cf_config["device"])
    epochs = int(config["cf_epochs"])
    return step * len(loader) * epochs, f"<= {epochs} epochs x {len(loader)} batches on the training split"


def _probe_tokenizer(config, dataset):
    """Seconds of one RQ-VAE training step (the reconstruction and CF terms; the diversity term's
    clustering, every ``div_cluster_interval`` epochs, is not in the probe)."""
    batch = min(int(config["tokenizer_batch_size"]), dataset.item_num - 1)
    semantic_dim = 384  # MiniLM's width: the default encoder; the MLP's first layer dominates only slightly
    model = tok.build_tokenizer(config, semantic_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-12)
    semantic = torch.randn(batch, semantic_dim)
    cf = torch.randn(batch, int(config["code_dim"]))

    def step():
        out = model(semantic, use_sinkhorn=True)
        loss = semantic_loss(semantic, out["s_hat"], out["quant_loss"])
        if float(config["alpha"]) > 0:
            loss = loss + float(config["alpha"]) * collaborative_loss(out["z_hat"], cf)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return time_steps(step, 1_000_000)


def placeholder_codes(config, n_items, seed=0):
    """Random unique-enough codes of the configured shape: a generator of the right size to probe before
    the tokenizer has run."""
    generator = np.random.default_rng(seed)
    levels, size = int(config["num_levels"]), int(config["codebook_size"])
    codes = generator.integers(0, size, (n_items, levels))
    codes[0] = PAD_CODE
    return ItemCodes(codes, [size] * levels).make_unique()


def format_plan(title, stages):
    """The plan as text: one line per stage, then the total of the estimates."""
    width = max(len(s.name) for s in stages)
    size_width = max(len(s.size) for s in stages)
    lines = [title]
    for s in stages:
        estimate = "-" if s.seconds is None else ("0 s" if s.status in ("cached", "given") else f"~{_duration(s.seconds)}")
        lines.append(f"  {s.name:<{width}}  {s.size:<{size_width}}  {estimate:>9}  {s.status}")
    total = sum(s.seconds or 0.0 for s in stages)
    lines.append(f"  {'total':<{width}}  {'(upper bound where early stopping may end sooner)':<{size_width}}  "
                 f"{'~' + _duration(total):>9}")
    return "\n".join(lines)


def busy_cpu_warning(device, threads=None, load=None, cores=None):
    """A line of advice when other processes keep the CPU busy and this run uses several threads, else None.

    With ``threads`` > 1, each of a small model's many parallel regions waits for all its threads; when
    another process holds a core, that wait can make a step many times slower (docs/results.md, "The main
    job on ml-100k"), while one thread only shares the core. ``load`` is the 1-minute load average, of
    which this process's own work (one core while the data loads) is taken off.
    """
    if torch.device(device).type != "cpu":
        return None
    threads = torch.get_num_threads() if threads is None else threads
    if load is None:
        if not hasattr(os, "getloadavg"):  # Windows has no load average
            return None
        load = os.getloadavg()[0]
    cores = os.cpu_count() if cores is None else cores
    others = load - 1.0
    if threads < 2 or others < 0.8 * max(1, cores - 1):
        return None
    return (f"note: the load average is {load:.1f} on {cores} cores, so other processes are running; with "
            f"{threads} threads a step can be many times slower than the plan says. OMP_NUM_THREADS=1 is "
            f"safer on a busy machine.")


def _duration(seconds):
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_stages(config, model_class, train_data, valid_data, test_data):
    """Every stage of one training run of ``model_class``: the tokenizer's (generators), training,
    validation and test, each probed on the real data. A generator is probed with placeholder codes of
    the configured shape (the tokenizer has not run yet); an LLM generator is not probed (its load alone
    takes long)."""
    dataset, device = train_data.dataset, config["device"]
    stages, model = [], None
    generative = is_generative(config["model"])
    streams = random_state(torch.device(device))
    try:
        if generative:
            stages += tokenizer_stages(config, dataset)
            if config["tokenize_only"]:
                return stages
            if "d_model" in config.final_config_dict:  # a T5 generator
                model = model_class(config, dataset, item_codes=placeholder_codes(config, dataset.item_num))
        else:
            model = model_class(config, dataset)
        train_epoch = valid_pass = None
        if model is not None:
            train_epoch, valid_pass = probe_epoch_seconds(config, model.to(device), train_data, valid_data)
            del model
    finally:
        set_random_state(streams, torch.device(device))
    epochs, eval_step = int(config["epochs"]), max(1, int(config["eval_step"] or 1))
    if issubclass(get_trainer(config["MODEL_TYPE"], config["model"]), TraditionalTrainer):
        epochs = 1  # RecBole's trainer of Pop / ItemKNN runs one epoch whatever the config says
    batches = min(len(train_data), int(config["train_batches_per_epoch"] or len(train_data)))
    passes = -(-epochs // eval_step)
    test_pass = None if valid_pass is None else valid_pass * len(test_data) / max(1, len(valid_data))
    stages += [
        Stage(f"training ({config['model']})", f"<= {epochs} epochs x {batches} batches of "
              f"{config['train_batch_size']}", None if train_epoch is None else epochs * train_epoch),
        Stage("validation", f"<= {passes} passes x {len(valid_data)} batches, {config['valid_metric']}",
              None if valid_pass is None else passes * valid_pass),
        Stage("test", f"{len(test_data)} batches, {', '.join(config['metrics'])} @ {config['topk']}", test_pass),
    ]
    return stages


def plan_title(config, dataset):
    profile = f", profile {config['profile']}" if config["profile"] else ""
    interactions = dataset.inter_num
    if hasattr(dataset, "item_list_length_field"):  # a sequential dataset holds one row per target: a user's
        interactions += len(dataset.inter_feat[dataset.uid_field].unique())  # first item is never one
    return (f"Plan: {config['model']} on {config['dataset']}{profile} ({dataset.user_num - 1:,} users, "
            f"{dataset.item_num - 1:,} items, {interactions:,} interactions), device {config['device']}")
