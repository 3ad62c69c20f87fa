"""What RecBole's Trainer cannot already do: a warm-up + cosine LR schedule, epochs of a fixed number
of batches, weight decay that spares norms and biases (as transformers' Trainer), resuming a stopped run,
DDP on CPU (gloo), autocast in bfloat16 on CUDA too, a training loop that does not wait for the GPU after
every batch, and checkpoints that are safe to load.

Checkpoints (the best one, ``<run id>.pth``, and the state after every epoch, ``<run id>-last.pth``) hold
only tensors and plain values (the config as its final values: strings, numbers, lists, dicts), so they
load with ``torch.load(weights_only=True)``, which runs no code. RecBole's own checkpoints pickle the
``Config`` object; such a file is refused with a clear error, never unpickled.
"""

import contextlib
import enum
import functools
import hashlib
import itertools
import json
import math
import os
import pickle
import random
import re
import secrets
import time
from logging import getLogger

import numpy as np
import scipy.sparse as sp
import torch
from recbole.trainer import Trainer
from recbole.utils import get_gpu_usage, set_color
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_letter.common import amp_dtype
from recbole_letter.files import write_atomic
from recbole_letter.learning_curve import LearningCurve, plot_curves
from recbole_letter.model.seen_items import SeenItems

NAN_CHECK_INTERVAL = 100  # batches between the loss's NaN checks off a CPU: each one waits for the device
CHECKPOINT_FORMAT = "recbole_letter checkpoint 1"  # what load_checkpoint accepts
# config keys that say where and how a run executes or reports, not what it computes: left out of the
# config digest, and free to differ when a run is resumed (the number of processes has its own check)
RUN_PLACEMENT_KEYS = frozenset({
    "run_id", "resume_from", "checkpoint_dir", "data_path", "device", "gpu_id", "use_gpu", "local_rank",
    "single_spec", "nproc", "world_size", "ip", "port", "offset", "state", "show_progress", "show_plan",
    "verbose", "eval_batch_size", "worker",
})  # fmt: skip
# keys a resumed run may change although they change what it computes: a new sitting gets its own time_budget
# (the epochs its first sitting planned, in -last.pth, hold)
RESUME_FREE_KEYS = frozenset({"time_budget"})
# keys added after run files were first written -> the value a run file without the key had in effect, from
# that file's config (None: the key does not matter to that run)
LATER_KEYS = {
    # before the key, a codes file's shared codes got a disambiguation level for all items
    "item_codes_collisions": lambda stored: "extra_level" if stored.get("item_codes_file") else None,
    # before the key, every parameter decayed (it matters only where there was weight decay)
    "decay_norms_and_biases": lambda stored: True if stored.get("weight_decay") else None,
}


def new_run_id(model, dataset):
    """A run's name, unique among runs started anywhere at the same time: ``<model>-<dataset>-<YYYYmmdd-HHMMSS>-
    <6 random hex>``. It names the run's checkpoints and its result rows."""
    return f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def plain_value(value):
    """``value`` as plain data a checkpoint can hold: None, bool, int, float, str, and lists, tuples and dicts
    of them; an enum as its name, a numpy scalar as its Python value, anything else (``torch.device``) as
    its ``str``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return tuple(plain_value(v) for v in value)
    if isinstance(value, (list, set, frozenset)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {plain_value(k): plain_value(v) for k, v in value.items()}
    return str(value)


def config_values(config):
    """A RecBole ``Config``'s final values as plain data (:func:`plain_value`), what checkpoints store."""
    return {key: plain_value(value) for key, value in config.final_config_dict.items()}


def config_digest(values):
    """16 hex digits of sha256 over a config's plain values (:func:`config_values`) without
    ``RUN_PLACEMENT_KEYS``: equal for runs that compute the same thing, wherever and whenever they ran."""
    kept = {key: value for key, value in values.items() if key not in RUN_PLACEMENT_KEYS}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# config keys naming an input file that may move between a stopped run and its resumption: compared by content
# (sha256, recorded in every checkpoint's header), not by path
FILE_KEYS = ("item_codes_file", "cf_emb_file")


def file_hashes(config):
    """``{key: sha256}`` of the files the config's ``FILE_KEYS`` name (those that exist)."""
    hashes = {}
    for key in FILE_KEYS:
        path = config[key]
        if path and os.path.isfile(path):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            hashes[key] = digest.hexdigest()
    return hashes


def check_resume_file(config, path, checkpoint=None, before_data=False):
    """Check a ``-last.pth`` file against the run that would continue it, before anything else is done:
    a ``-last.pth`` of this format, of the same model and dataset, with the same config (keys outside
    ``RUN_PLACEMENT_KEYS`` and ``RESUME_FREE_KEYS``; ``enable_amp: auto`` settles again on this machine;
    ``FILE_KEYS`` by content, so a moved codes file with the same content is fine),
    and the best checkpoint it names exists and belongs to the same run (unless none was saved yet).
    ``quick_start`` runs it right after building the config (before the data loads and the tokenizer stage);
    :meth:`LetterTrainer.resume_checkpoint` again. A ``ValueError`` says which input is wrong. Returns the
    checkpoint (memory-mapped when not given). ``before_data``: keys the run sets only while loading data or
    building the model (RecBole's data transforms set ``MASK_INDEX`` and such) are not compared yet."""
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(path, mmap=True)
    if "best_model_file" not in checkpoint:
        raise ValueError(f"{path} is not a '-last.pth' file written by LetterTrainer (best checkpoints "
                         f"cannot be resumed: evaluate them with --checkpoint)")
    stored = dict(checkpoint["config"])
    unset, implied = set(), set()
    for key, before in LATER_KEYS.items():
        if key not in stored:
            stored[key] = before(stored)
            if stored[key] is None:
                unset.add(key)
            implied.add(key)
    for key in ("model", "dataset"):
        if stored.get(key) != config[key]:
            raise ValueError(f"{path} belongs to {key} {stored.get(key)!r}, not {config[key]!r}")
    current = config_values(config)
    stored_files, current_files = checkpoint.get("files") or {}, file_hashes(config)
    same_content = {key for key in FILE_KEYS if key in stored_files and stored_files[key] == current_files.get(key)}
    compared = set(current) if before_data else set(stored) | set(current)
    # enable_amp: auto settles per machine (common.settle_enable_amp): a run moved to another CPU may continue
    # in another precision, and says so
    resettled = checkpoint.get("amp_requested") == "auto" == getattr(config, "amp_requested", None)
    if resettled:
        compared.discard("enable_amp")
        if stored.get("enable_amp") != current.get("enable_amp") and not before_data:  # said once, in the log
            getLogger().warning(f"{path}: enable_amp: auto settled to {stored.get('enable_amp')} where the run "
                                f"started and to {current.get('enable_amp')} here: the resumed epochs run in "
                                f"{'autocast' if current.get('enable_amp') else 'float32'}")
    free = RUN_PLACEMENT_KEYS | RESUME_FREE_KEYS | same_content | unset
    differing = sorted(key for key in compared if key not in free and stored.get(key) != current.get(key))
    if differing:
        def shown(key):
            text = f"{key}: {stored.get(key)!r} there, {current.get(key)!r} here"
            if key in implied:
                text += " (the run file is older than the key: the value its run had)"
            if key in stored_files:  # a file: say what differs, its content
                there, here = stored_files[key][:12], (current_files.get(key) or "none")[:12]
                text += f" (content sha256 {there} there, {here} here)"
            return text

        more = f" (and {len(differing) - 5} more)" if len(differing) > 5 else ""
        raise ValueError(f"{path} was written with another config: {'; '.join(shown(k) for k in differing[:5])}{more}. "
                         f"Resume with the run's own config (same files and --key=value settings)")
    best = checkpoint["best_model_file"]
    if math.isinf(checkpoint["best_valid_score"]):
        getLogger().info(f"{path}: no best checkpoint saved yet (no validation has run); it will be {best}")
        return checkpoint
    if not os.path.isfile(best):
        raise ValueError(f"{path} continues run {checkpoint['run_id']}, whose best checkpoint {best} does not "
                         f"exist (moved or deleted?): put it back at that path (relative to the folder the "
                         f"run started in) before resuming")
    best_run = load_checkpoint(best, mmap=True).get("run_id")
    if best_run != checkpoint["run_id"]:
        raise ValueError(f"{best} belongs to run {best_run!r}, not to run {checkpoint['run_id']!r} of {path}")
    return checkpoint


def encode_other_parameter(parameters):
    """A model's ``other_parameter()`` (tensors, numpy arrays, scipy sparse matrices, sub-modules, plain
    values) as tensors and plain values; :func:`decode_other_parameter` reverses it."""
    encoded = {}
    for name, value in (parameters or {}).items():
        if value is None or torch.is_tensor(value) or isinstance(value, (bool, int, float, str)):
            encoded[name] = value
        elif isinstance(value, np.ndarray):
            encoded[name] = {"kind": "numpy", "tensor": torch.from_numpy(np.ascontiguousarray(value))}
        elif sp.issparse(value):
            coo = value.tocoo()
            encoded[name] = {"kind": "scipy", "format": value.format, "shape": tuple(int(n) for n in value.shape),
                             "row": torch.from_numpy(coo.row.astype(np.int64)),
                             "col": torch.from_numpy(coo.col.astype(np.int64)),
                             "data": torch.from_numpy(np.ascontiguousarray(coo.data))}
        elif isinstance(value, torch.nn.Module):
            encoded[name] = {"kind": "module", "state_dict": value.state_dict()}
        else:
            raise TypeError(f"other_parameter {name!r} is a {type(value).__name__}, which a checkpoint cannot "
                            f"hold as tensors and plain values")
    return encoded


def decode_other_parameter(model, encoded):
    """What :func:`encode_other_parameter` stored, as ``model.load_other_parameter`` takes it (a sub-module's
    weights are loaded into ``model``'s own sub-module of that name)."""
    decoded = {}
    for name, value in (encoded or {}).items():
        kind = value.get("kind") if isinstance(value, dict) else None
        if kind == "numpy":
            value = value["tensor"].numpy()
        elif kind == "scipy":
            matrix = sp.coo_matrix((value["data"].numpy(), (value["row"].numpy(), value["col"].numpy())),
                                   shape=value["shape"])
            value = matrix.asformat(value["format"])
        elif kind == "module":
            module = getattr(model, name)
            module.load_state_dict(value["state_dict"])
            value = module
        decoded[name] = value
    return decoded


def save_checkpoint(state, path):
    """``torch.save`` of ``state`` (tensors and plain values) to ``path``, atomically: a kill while writing
    leaves the previous file, and concurrent writers never share a temporary file."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path, device="cpu", mmap=False):
    """Load a checkpoint this package wrote, with ``torch.load(weights_only=True)``: tensors and plain
    values only, no code runs.

    Args:
        path: the checkpoint file (``<run id>.pth`` or ``<run id>-last.pth``).
        device: where its tensors go (``map_location``).
        mmap: map the file instead of reading it (cheap when only its plain values are needed).

    Returns:
        dict: ``format``, ``run_id``, ``config`` (plain values), ``state_dict`` and the rest.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not such a checkpoint: it holds pickled objects (RecBole's own checkpoints,
            this package's before the format changed), is not a torch file, or lacks the format mark.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:  # a pickled object: torch refused to import the class or function that would rebuild it
            raise ValueError(f"{path} holds pickled Python objects, which are never loaded here (unpickling can "
                             f"run code; this file would call {found.group(1)}): a checkpoint written by RecBole "
                             f"itself or by an older recbole_letter. Train again to get a checkpoint of tensors "
                             f"and plain values") from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or another kind of file): "
                         f"{reason.group(1).strip() if reason else type(error).__name__}") from None
    except (RuntimeError, EOFError, OSError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or another kind of file): "
                         f"{reason}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a recbole_letter checkpoint (format {found!r}, expected "
                         f"{CHECKPOINT_FORMAT!r}): train again, or evaluate it with the program that wrote it")
    kinds = {"run_id": str, "config": dict, "state_dict": dict}  # what every checkpoint written here holds
    wrong = [key for key, kind in kinds.items() if not isinstance(checkpoint.get(key), kind)]
    if wrong:
        raise ValueError(f"{path} has the recbole_letter format mark but lacks {', '.join(wrong)} (or holds "
                         f"something else there): not a whole checkpoint of this package; train again")
    return checkpoint


def check_data_fingerprint(stored, current, path):
    """A ``ValueError`` naming what differs when the data a checkpoint was trained on (``stored``) is not
    this data (``current``); a checkpoint from before fingerprints (``None``) is not checked."""
    if stored is None:
        getLogger().warning(f"{path} records no data fingerprint (written before they were): the data it "
                            f"was trained on cannot be checked")
        return
    if stored == current:
        return
    differing = [f"{key} {stored.get(key)!r} there, {current.get(key)!r} here"
                 for key in ("users", "items", "interactions") if stored.get(key) != current.get(key)]
    old_files, new_files = stored.get("sha256", {}), current.get("sha256", {})
    for name in sorted(set(old_files) | set(new_files)):
        if old_files.get(name) != new_files.get(name):
            shown = lambda digest: digest[:12] if digest else "none"  # noqa: E731
            differing.append(f"{name} sha256 {shown(old_files.get(name))} there, {shown(new_files.get(name))} here")
    raise ValueError(f"{path} was trained on other data: {'; '.join(differing)}. "
                     f"Use the dataset files it was trained on (data_path)")


@contextlib.contextmanager
def default_autocast_dtype(device_type, dtype):
    """Make ``torch.autocast(device_type)`` without a dtype mean ``dtype`` inside this block (RecBole's
    training loop opens its autocast without one: float16 on CUDA, bfloat16 on a CPU)."""
    previous = torch.get_autocast_dtype(device_type)
    torch.set_autocast_dtype(device_type, dtype)
    try:
        yield
    finally:
        torch.set_autocast_dtype(device_type, previous)


def batch_to_device(model, interaction, device):
    """A training batch as ``LetterTrainer`` hands it to ``model``: prepared on the host by the model's
    ``host_batch`` where it has one, then moved to ``device``."""
    host_batch = getattr(model, "host_batch", None)
    return (interaction if host_batch is None else host_batch(interaction)).to(device)


def backward_parts(parts, autocast, scale=None):
    """Forward (inside ``autocast()``) and backward (of ``scale(part)``) each loss part of ``parts`` (a model's
    ``loss_chunks``) in turn, so one part's activations are alive at a time -> the parts' sum, detached."""
    loss = None
    while True:
        with autocast():
            part = next(parts, None)
        if part is None:
            return loss
        (part if scale is None else scale(part)).backward()
        loss = part.detach() if loss is None else loss + part.detach()


def average_gradients(model):
    """The gradients of ``model``'s trainable parameters averaged over the processes of the default group:
    DDP's gradient reduction (divided by the number of processes first, then summed: scaled float16
    gradients stay in range), done by hand after a step's several backward passes (the loss parts), which
    DDP's reducer cannot follow (it expects one per forward). One all-reduce per parameter dtype (an LLM in
    bfloat16 with float32 LoRA weights has two). A parameter without a gradient this step counts as zeros,
    as RecBole's zero-weighted sync loss makes it."""
    world = torch.distributed.get_world_size()
    by_dtype = {}
    for param in model.parameters():
        if param.requires_grad:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            by_dtype.setdefault(param.dtype, []).append(param.grad)
    for grads in by_dtype.values():
        flat = torch.cat([grad.reshape(-1) for grad in grads]).div_(world)
        torch.distributed.all_reduce(flat)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def random_state(device, generator=None):
    """Every random stream training draws from: torch's, ``device``'s CUDA one, numpy's, Python's and a
    loader's ``generator`` (its shuffle); tensors and plain values only."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,  # GPU dropout
        "numpy": (name, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)),
        "python": random.getstate(),
        "loader_generator": generator.get_state() if generator is not None else None,
    }


def set_random_state(state, device, generator=None):
    """Put back what :func:`random_state` returned (the CUDA stream only when ``device`` is a GPU: a GPU
    run's state continues on a CPU too)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if generator is not None and state["loader_generator"] is not None:
        generator.set_state(state["loader_generator"])


class FirstBatches:
    """The first ``n_batches`` batches of each pass over ``loader`` (a fresh shuffle every pass, so
    successive epochs see different batches); everything else is the loader's."""

    def __init__(self, loader, n_batches):
        self.loader = loader
        self.n_batches = min(int(n_batches), len(loader))

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n_batches)

    def __len__(self):
        return self.n_batches

    def __getattr__(self, name):  # only reached for names this wrapper lacks (sampler, dataset, ...)
        if name == "loader":  # not set yet (copy / unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


class SafeCheckpoints:
    """For a RecBole trainer class (listed before it among the bases): checkpoints named by the run id
    (``config["run_id"]``; under DDP rank 0's) and written atomically, holding only tensors and plain values,
    and read back with :func:`load_checkpoint`. RecBole's own ``_save_checkpoint`` pickles the ``Config``,
    which its own ``evaluate`` then cannot read on torch >= 2.6.

    The run id comes from the config (``quick_start.build_config`` makes one per run); a config without one
    gets a new one here. Two trainers built on one config share it, and so their checkpoint files.
    """

    def __init__(self, config, model):
        # RecBole's ensure_dir checks, then creates: under DDP two ranks race and one gets FileExistsError
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        super().__init__(config, model)
        run_id = config["run_id"] or new_run_id(config["model"], config["dataset"])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = [run_id]  # every rank names (and reads) the files rank 0 writes
            torch.distributed.broadcast_object_list(shared, src=0)
            run_id = shared[0]
        self.run_id = config["run_id"] = run_id
        self.saved_model_file = os.path.join(self.checkpoint_dir, f"{run_id}.pth")
        self.data_fingerprint = None  # quick_start sets it (quick_start.data_fingerprint) once the data is loaded
        self.file_hashes = file_hashes(config)
        # the valid metric against wall-clock minutes: <run id>.curve.csv and .png beside the checkpoint
        self.curve = LearningCurve(self.curve_path())
        self.write_curve = False  # fit(saved=True) turns it on
        self.fit_started = time.perf_counter()
        self.minutes_before = 0.0  # of the earlier processes of a resumed run

    def curve_path(self):
        return os.path.splitext(self.saved_model_file)[0] + ".curve.csv"

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.write_curve = saved and self.config["local_rank"] in (0, None)
        self.fit_started = time.perf_counter()
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def curve_minutes(self):
        """Wall-clock minutes of training and validation so far, earlier processes of a resumed run included."""
        return self.minutes_before + (time.perf_counter() - self.fit_started) / 60

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress)
        if self.write_curve:
            epoch = max(self.train_loss_dict)  # RecBole's fit records an epoch's loss before validating it
            self.curve.add(epoch, self.curve_minutes(), valid_score, valid_result)
            png = os.path.splitext(self.curve.path)[0] + ".png"
            plot_curves([(self.run_id, self.curve.path)], png, metric=f"valid {self.valid_metric}", title=self.run_id)
        return valid_score, valid_result

    def checkpoint_header(self):
        """What every checkpoint of this run starts with: format mark, run id, the config's plain values, the
        fingerprint of the data it trains on (counts and file hashes; ``None`` when not known), the sha256
        of the files ``FILE_KEYS`` name and ``enable_amp`` as requested (``auto``, where the config holds what
        it settled to)."""
        return {"format": CHECKPOINT_FORMAT, "run_id": self.run_id, "config": config_values(self.config),
                "data": self.data_fingerprint, "files": self.file_hashes,
                "amp_requested": plain_value(getattr(self.config, "amp_requested", None))}

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's best checkpoint (same keys), as tensors and plain values."""
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            **self.checkpoint_header(),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": encode_other_parameter(self.model.other_parameter()),
            "optimizer": self.optimizer.state_dict(),
        }  # fmt: skip
        save_checkpoint(state, saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def save_pretrained_model(self, epoch, saved_model_file):
        """RecBole's ``PretrainTrainer`` checkpoint (S3Rec, RaCT pre-training), as tensors and plain values, named
        by the run id (``<checkpoint_dir>/<run id>-pretrain-<epoch>.pth``): RecBole's ``<model>-<dataset>-<epoch>
        .pth`` is the same for every run of the pair, so two runs would overwrite each other's."""
        saved_model_file = os.path.join(self.checkpoint_dir, f"{self.run_id}-pretrain-{epoch + 1}.pth")
        self.logger.info(f"pre-trained model of epoch {epoch + 1}: {saved_model_file} (set pre_model_path to it "
                         f"to fine-tune)")
        state = {
            **self.checkpoint_header(),
            "epoch": epoch,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "other_parameter": encode_other_parameter(self.model.other_parameter()),
        }  # fmt: skip
        save_checkpoint(state, saved_model_file)
        self.saved_model_file = saved_model_file

    def load_weights(self, path):
        """Load the weights (and other parameters) of checkpoint ``path`` into the model; returns the checkpoint."""
        checkpoint = load_checkpoint(path, self.device)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(decode_other_parameter(self.model, checkpoint.get("other_parameter")))
        self.logger.info(f"Loading model structure and parameters from {path} (run {checkpoint.get('run_id')})")
        return checkpoint

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            if not self.config["single_spec"]:
                torch.distributed.barrier()  # rank 0 has finished writing the checkpoint
            self.load_weights(model_file or self.saved_model_file)
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)


BUDGET_RESERVE = 0.05  # time_budget: share of the time left that a plan keeps free (the estimates' error)


class CosineToEnd:
    """``lr_scheduler: cosine`` as a factor of the peak learning rate at a step: a linear warm-up over
    ``warmup_steps``, then ``(1 + cos(phase)) / 2``, the phase going linearly from ``anchor_phase`` at
    ``anchor_step`` to pi (the rate 0) at ``total_steps``. Anchored at the warm-up's end with phase 0 (the
    default) it is ``transformers``' ``get_cosine_schedule_with_warmup`` to the bit; :meth:`ending_at` gives the
    same curve from a step on, ending elsewhere, so a new ``time_budget`` plan never makes the rate jump."""

    def __init__(self, warmup_steps, total_steps, anchor_step=None, anchor_phase=0.0):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.anchor_step = self.warmup_steps if anchor_step is None else int(anchor_step)
        self.anchor_phase = float(anchor_phase)

    def phase(self, step):
        progress = float(step - self.anchor_step) / float(max(1, self.total_steps - self.anchor_step))
        return self.anchor_phase + (math.pi - self.anchor_phase) * progress

    def __call__(self, step):
        if step < self.warmup_steps:
            return float(step) / float(max(1, self.warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(self.phase(step))))

    def ending_at(self, step, total_steps):
        """This schedule from ``step`` (past the warm-up) on, reaching 0 at ``total_steps`` instead: the rate at
        ``step`` is kept, and the rest of the cosine is stretched or squeezed over the steps left."""
        return CosineToEnd(self.warmup_steps, total_steps, step, self.phase(step))

    def state(self):
        """Plain values for a checkpoint: ``CosineToEnd(**state)`` is this schedule again."""
        return {"warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "anchor_step": self.anchor_step, "anchor_phase": self.anchor_phase}


def plan_epochs(train_epoch, valid_pass, eval_step, test_pass, seconds_left, max_epochs, reserve=BUDGET_RESERVE):
    """Epochs that fit in ``seconds_left`` before the test pass, with a ``reserve`` share kept free: at
    most ``max_epochs`` and at least one. LetterTrainer validates every ``eval_step``-th epoch and the
    last one, so the plan counts one validation pass more when ``eval_step`` > 1 (none when it is 0)."""
    eval_step = int(eval_step)
    epoch_seconds = train_epoch + (valid_pass / eval_step if eval_step > 0 else 0.0)
    last_valid = valid_pass if eval_step > 1 else 0.0
    fits = int(((seconds_left - test_pass) * (1 - reserve) - last_valid) / max(epoch_seconds, 1e-9))
    return max(1, min(int(max_epochs), fits))


def weight_decay_groups(model, weight_decay):
    """``model``'s trainable parameters as two optimiser groups, as ``transformers``' ``Trainer`` makes them
    (its own rule, ``get_decay_parameter_names``, which does not use its instance; the LETTER release's older
    version made the same split of the T5): ``weight_decay`` on all but the normalisation layers' parameters
    and those named *bias* (T5's relative-position bias table too), which get none. The second group is left
    out when it would be empty."""
    from transformers import Trainer as HFTrainer

    decayed = set(HFTrainer.get_decay_parameter_names(None, model))
    decay, exempt = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if name in decayed else exempt).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    return groups + [{"params": exempt, "weight_decay": 0.0}] if exempt else groups


class DeadlineReached(Exception):
    """The next epoch would not fit before the run's deadline (``time_budget``; raised at the start of that epoch)."""


class PlanDone(Exception):
    """The epochs a ``time_budget`` plan holds have run (RecBole's loop goes on to the config's ``epochs``)."""


def agreed(value):
    """``value`` (a number) as rank 0 of a DDP run has it, on every rank; ``value`` itself outside DDP. The
    time-budget decisions come from one clock, so every rank trains the same epochs."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    shared = [value]
    torch.distributed.broadcast_object_list(shared, src=0)  # an object collective: gloo and NCCL alike
    return shared[0]


def _minutes(seconds):
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class LetterTrainer(SafeCheckpoints, Trainer):
    """RecBole's ``Trainer`` plus:

    * ``lr_scheduler: cosine``: transformers' ``get_cosine_schedule_with_warmup`` (:class:`CosineToEnd`), a
      linear warm-up over ``warmup_ratio`` of the steps (at least one), then a cosine to 0, stepped once per
      batch over the epochs the run trains (``epochs``, or fewer under a ``time_budget``);
    * ``decay_norms_and_biases: False``: no weight decay on the normalisation layers' parameters and those
      named *bias*, as ``transformers``' ``Trainer`` (:func:`weight_decay_groups`; RecBole decays every one);
    * ``train_batches_per_epoch``: an epoch ends after that many batches of a fresh shuffle (an LLM
      epoch over every training prefix can take days; validation and early stopping then come sooner);
    * resuming: at the start of every epoch the state after the previous one (weights, optimiser,
      schedule, early-stopping counters, every process's random generators, CUDA's included) goes to
      ``<best checkpoint>-last.pth``;
      :meth:`resume_checkpoint` (``resume_from``) continues the run from it, writing the same best checkpoint;
    * the last epoch is validated whatever ``eval_step`` >= 1 (RecBole validates only when
      ``(epoch + 1) % eval_step == 0``): a run ends on a measured epoch and has a best checkpoint;
    * ``enable_amp`` autocasts to ``amp_dtype`` (bfloat16 by default) on every device: RecBole's own
      loop would use float16 on CUDA, where T5 is known to overflow and a gradient scaler is needed;
    * DDP on CPU: RecBole wraps the model with ``device_ids=[local_rank]``, which only GPU modules accept;
    * no wait for the device per batch: RecBole's loop reads every batch's loss (``loss.item()``) and tests
      it for NaN before the backward pass, so on a GPU the host stops twice a batch until the device has
      caught up and never queues the next work while the device runs. Here the losses are summed on the
      device (in float64, in order: the same epoch loss as RecBole's float sum) and read once per epoch; the
      NaN test runs on every batch on a CPU (free there) and every ``NAN_CHECK_INTERVAL`` batches and at
      the epoch's end elsewhere. A model may also prepare each batch while it is still on the host
      (``host_batch(interaction) -> interaction``, e.g. cut padding that would cost a wait on the device);
    * a model may give its loss in parts (``loss_chunks(interaction)``, a generator whose parts sum to
      ``calculate_loss``; the generators' length buckets): each part's backward pass runs before the next
      part's forward, so one part's activations are kept at a time; under DDP the gradients are then
      averaged over the processes by hand (:func:`average_gradients`);
    * a deadline (``time_budget``, see :meth:`plan_to_deadline`): the epochs sized to what fits, the schedule
      spanning them, and a stop at the start of an epoch that would no longer fit;
    * checkpoints of tensors and plain values, named by the run id (:class:`SafeCheckpoints`).
    """

    def __init__(self, config, model):
        cpu_ddp = not config["single_spec"] and config["device"].type == "cpu"
        if cpu_ddp:  # let RecBole skip its GPU-only DDP wrapper, then wrap for CPU ourselves
            config["single_spec"] = True
        super().__init__(config, model)
        if cpu_ddp:
            config["single_spec"] = False
            self.distributed_model = DistributedDataParallel(self.model)
        self.lr_scheduler_name = config["lr_scheduler"]
        self.warmup_ratio = config["warmup_ratio"]
        self.scheduler = None
        self.train_batches_per_epoch = config["train_batches_per_epoch"]
        if self.train_batches_per_epoch is not None and int(self.train_batches_per_epoch) < 1:
            raise ValueError(f"train_batches_per_epoch must be ~ or >= 1, got {self.train_batches_per_epoch}")
        if self.lr_scheduler_name not in (None, "cosine"):
            raise ValueError(f"lr_scheduler must be ~ or 'cosine', got {self.lr_scheduler_name!r}")
        self.last_model_file = os.path.splitext(self.saved_model_file)[0] + "-last.pth"
        self.save_last = False
        self.resumed = None  # what resume_checkpoint() read that fit() applies: schedule position, loader generator
        self.amp_dtype = amp_dtype(config)
        self.nan_check_interval = 1 if self.device.type == "cpu" else NAN_CHECK_INTERVAL
        self._fit_started = None  # when this process's first epoch began (the progress bar's time left)
        self.seen_items = getattr(model, "seen_items", None)  # exclude_seen_items: see set_seen_items
        # time_budget (plan_to_deadline): the time.time() by which training, validation and the test are done,
        # the seconds a training epoch / validation / test take (estimates, then measured), the epochs the
        # schedule spans (kept in -last.pth: a resumed run keeps its schedule), and why fit stopped early
        self.deadline = None
        self.pace = None
        self.planned_epochs = None
        self.stopped_at_deadline = None
        self.configured_eval_step = self.eval_step  # self.eval_step is set per epoch (see _train_epoch)

    def _build_optimizer(self, **kwargs):
        """RecBole's optimiser; with ``decay_norms_and_biases: False`` and weight decay, over
        :func:`weight_decay_groups` (the rule of ``transformers``' ``Trainer``, which the LETTER release trained
        with), and one log line says how many parameters decay. A config without the key (a checkpoint's from
        before it, evaluated) keeps RecBole's rule, as its run had."""
        weight_decay = kwargs.get("weight_decay", self.weight_decay)
        spare = self.config["decay_norms_and_biases"] is not None and not self.config["decay_norms_and_biases"]
        # learners RecBole gives the weight decay to (an unknown name falls back to Adam without any)
        decays = kwargs.get("learner", self.learner).lower() in ("adam", "adamw", "sgd", "adagrad", "rmsprop")
        if "params" not in kwargs and weight_decay and spare and decays:
            groups = weight_decay_groups(self.model, weight_decay)
            exempt = sum(p.numel() for group in groups[1:] for p in group["params"])
            total = sum(p.numel() for group in groups for p in group["params"])
            self.logger.info(f"weight decay {weight_decay} on {total - exempt:,} of {total:,} trainable parameters: "
                             f"not on the {exempt:,} of the normalisation layers and those named *bias* "
                             f"(decay_norms_and_biases: False, as transformers' Trainer)")
            kwargs["params"] = groups
        return super()._build_optimizer(**kwargs)

    def set_seen_items(self, train_dataset):
        """``exclude_seen_items``: remove each user's training-split items from a sequential model's ranking,
        as RecBole does for general models (``recbole_letter.model.seen_items``)."""
        if self.seen_items is None:
            self.seen_items = SeenItems(train_dataset)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.config["exclude_seen_items"] and batched_data[1] is None:  # sequential: RecBole masks nothing
            if self.seen_items is None:
                raise ValueError("exclude_seen_items needs the training split: call trainer.set_seen_items(train_dataset)")
            users = interaction[self.config["USER_ID_FIELD"]].to(scores.device)
            seen = self.seen_items.mask(users, interaction[self.model.ITEM_SEQ].to(scores.device))
            scores = scores.masked_fill(seen, float("-inf"))
        return interaction, scores, positive_u, positive_i

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.train_batches_per_epoch is not None:
            train_data = FirstBatches(train_data, self.train_batches_per_epoch)
        if self.resumed and self.resumed["loader_generator"] is not None:
            train_data.generator.set_state(self.resumed["loader_generator"])
        self._train_batches_per_epoch = len(train_data)
        if self.lr_scheduler_name == "cosine" and self.scheduler is None:
            resumed = self.resumed or {}
            self.scheduler = self._cosine_schedule(len(train_data), resumed.get("scheduler_steps") or 0,
                                                   resumed.get("schedule"))
            # one scheduler step after every optimiser step, without copying RecBole's epoch loop
            self.optimizer.register_step_post_hook(lambda *_: self.scheduler.step())
        self.save_last = saved
        try:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        except PlanDone:
            pass
        except DeadlineReached as stop:
            self.stopped_at_deadline = str(stop)
            self.logger.warning(f"time_budget: {stop}; the test evaluates the best checkpoint so far "
                                f"({self.saved_model_file}); continue with --resume_from={self.last_model_file}")
        self._add_hparam_to_tensorboard(self.best_valid_score)  # what RecBole's loop does when it ends
        return self.best_valid_score, self.best_valid_result

    @property
    def epochs_to_run(self):
        """The epochs this run trains: the config's ``epochs``, or fewer when a ``time_budget`` plan holds fewer."""
        return self.epochs if self.planned_epochs is None else self.planned_epochs

    def _cosine_schedule(self, batches_per_epoch, steps_done, saved=None, going_on=False):
        """The warm-up + cosine schedule over the epochs this run trains (:attr:`epochs_to_run`), at step
        ``steps_done``: a fresh one, or ``saved`` (a :meth:`CosineToEnd.state` from ``-last.pth``), or with
        ``going_on`` (a new ``time_budget`` plan) the running one from ``steps_done`` on, ending at the new horizon
        (:meth:`CosineToEnd.ending_at`; a fresh one while the warm-up lasts)."""
        total_steps = max(1, batches_per_epoch * self.epochs_to_run)
        if saved is not None:
            schedule = CosineToEnd(**saved)
        elif going_on and steps_done >= self.schedule.warmup_steps:
            schedule = self.schedule.ending_at(steps_done, total_steps)
        else:
            schedule = CosineToEnd(max(1, round(total_steps * self.warmup_ratio)), total_steps)
        # last_epoch = steps_done - 1: the scheduler's own first step lands on steps_done
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule, last_epoch=steps_done - 1)

    @property
    def schedule(self):
        """The running scheduler's :class:`CosineToEnd` (kept in ``-last.pth``)."""
        return self.scheduler.lr_lambdas[0]

    def plan_to_deadline(self, deadline, train_epoch, valid_pass, test_pass):
        """Fit the run into ``deadline`` (a ``time.time()``): the epochs the config allows are cut to what fits
        from these estimates (seconds of a training epoch, a validation pass, the test pass; a probe's), and the
        learning-rate schedule spans them. After every epoch of this process the plan is made again from the
        (lower) median of the measured epochs (the probe times a few batches only; a first epoch may carry
        one-off costs, and another program may slow a few): after each of the first two, the cosine is built
        again over the new horizon (they correct the probe, possibly by far); after later ones, when the plan
        moves by two epochs or more, the rate goes on from where it is to 0 at the new horizon
        (:meth:`CosineToEnd.ending_at`: no jump, however late). At the start of every epoch the run stops (it tests its
        best checkpoint and keeps its state for ``resume_from``) when that epoch would not end, with its
        validation and the test after it, before the deadline; an epoch after which no other would fit is validated. A resumed run keeps its
        schedule (the epochs its first sitting planned, or the config's): only the stop applies to it.
        Returns the epochs planned."""
        self.deadline = deadline
        # "train": the probe's epoch (measured epochs go to "trained"); "valid" and "test" are updated as they run
        self.pace = {"train": train_epoch, "valid": valid_pass, "test": test_pass, "trained": [], "validations": [],
                     "probe_valid": valid_pass, "probe_test": test_pass, "ended": None, "validated": False}
        configured = self.epochs
        if self.resumed is not None:
            self.planned_epochs = self.planned_epochs or configured
            self.logger.info(f"time_budget: {(deadline - time.time()) / 60:.1f} min left; a resumed run keeps its "
                             f"schedule ({self.planned_epochs} epochs) and stops before an epoch that would not "
                             f"count before the budget's end")
            return self.planned_epochs
        left = deadline - time.time()
        planned = self.start_epoch + plan_epochs(train_epoch, valid_pass, self.configured_eval_step, test_pass, left,
                                                 configured - self.start_epoch)
        self.planned_epochs = agreed(planned)
        if left <= test_pass + train_epoch:
            self.logger.warning(f"time_budget: {max(0.0, left) / 60:.1f} min left when training begins (the data, "
                                f"the tokenizer and the probe took the rest): one epoch runs, past the budget")
        self.logger.info(
            f"time_budget: {left / 60:.1f} min left; a probe puts a training epoch at ~{_minutes(train_epoch)}, "
            f"a validation at ~{_minutes(valid_pass)}, the test at ~{_minutes(test_pass)}: {self.planned_epochs} of "
            f"the {configured} epochs fit" + (", the schedule spans them" if self.lr_scheduler_name else ""))
        return self.planned_epochs

    def _replans(self, epoch_idx):
        """Whether the plan is made again before epoch ``epoch_idx`` (0-based; see plan_to_deadline): after
        every epoch this process has measured, up to the last one planned, in a run that did not resume."""
        measured = len(self.pace["trained"])
        return bool(measured) and self.resumed is None and epoch_idx < self.epochs_to_run

    def _replan(self, epoch_idx):
        """The plan again from the (lower) median of the epochs measured so far (see plan_to_deadline); the
        schedule's length follows from the step it has reached: built again over the new horizon after the
        first two epochs, going on from its rate after later ones."""
        trained = sorted(self.pace["trained"])
        measured = trained[(len(trained) - 1) // 2]  # the lower median: after two epochs, the faster one
        left = self.deadline - time.time()
        planned = agreed(epoch_idx + plan_epochs(measured, self.pace["valid"], self.configured_eval_step,
                                                 self.pace["test"], left, self.epochs - epoch_idx))
        going_on = len(trained) > 2  # after the first two epochs: the rate goes on from where it is
        # after the first two epochs a plan moves by two epochs or more: not back and forth by one each epoch
        if planned == self.planned_epochs or (going_on and abs(planned - self.planned_epochs) < 2):
            return
        runs = f"epoch {epoch_idx} trained in" if epoch_idx == 1 else f"epochs 1-{epoch_idx} trained in a median of"
        spans = "; the schedule goes on from its rate to 0 over them" if going_on else "; the schedule spans them"
        self.logger.info(f"time_budget: {runs} {_minutes(measured)} (the probe said "
                         f"{_minutes(self.pace['train'])}): {planned} epochs fit, not {self.planned_epochs}"
                         + (spans if self.scheduler is not None else ""))
        self.planned_epochs = planned
        if self.scheduler is not None:
            self.scheduler = self._cosine_schedule(self._train_batches_per_epoch, self.scheduler.last_epoch,
                                                   going_on=going_on)

    def _measure_pace(self, now):
        """At the start of an epoch: what ran since the previous epoch's training ended (its validation and
        best checkpoint, or nothing) joins the estimates: a validation counts as the longest measured one (the
        probe's estimate only until one is measured); the test pass is taken to scale as validation does."""
        pace = self.pace
        if pace["ended"] is None:
            return
        between = now - pace["ended"]
        if pace["validated"]:
            pace["validations"].append(between)
            pace["valid"] = max(pace["validations"])
            pace["test"] = pace["probe_test"] * pace["valid"] / max(pace["probe_valid"], 1e-9)
        else:
            pace["trained"][-1] += between

    def _keep_to_deadline(self, epoch_idx, validates):
        """Whether epoch ``epoch_idx`` is validated, given ``validates`` (``eval_step``'s rule), so that the run
        ends on a measured epoch before the deadline. Raises :class:`DeadlineReached` when the epoch would not
        count before the deadline (trained, validated when no other epoch would fit after it, and the test
        pass after the run) and there is something to test (the best checkpoint; the weights themselves when
        nothing is saved). An epoch counts as long as the longer of the last one and the mean so far, a
        validation as the longest. One decision for all DDP ranks (rank 0's)."""
        trained = self.pace["trained"]
        train = max(trained[-1], sum(trained) / len(trained)) if trained else self.pace["train"]
        valid, test = self.pace["valid"], self.pace["test"]
        left = self.deadline - time.time()
        testable = os.path.isfile(self.saved_model_file) if self.save_last else bool(trained)
        go, validate, stop = 0, 1, 2
        with_valid = validates or self.configured_eval_step > 0
        need = train + (valid if with_valid else 0.0) + test
        if validates or not with_valid:
            decision = stop if need > left and testable else go
        elif train + valid + train + test <= left:  # room for a later epoch with its validation
            decision = go
        else:  # the last epoch that fits, if it fits: validated, so that it counts
            decision = stop if need > left and testable else validate
        decision = agreed(decision)
        if decision == stop:
            parts = "the epoch, its validation and the test" if with_valid else "the epoch and the test"
            raise DeadlineReached(f"stopped before epoch {epoch_idx + 1} of {self.epochs_to_run}: "
                                  f"{_minutes(max(0.0, left))} left, {parts} need ~{_minutes(need)}")
        return validates or decision == validate

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        started = time.time()  # an epoch's time: from here (the previous state's save included) to its end
        if self.deadline is not None:
            self._measure_pace(started)
            if self._replans(epoch_idx):
                self._replan(epoch_idx)  # before the state is saved: a resumed run keeps the new plan
        if self.save_last and epoch_idx > self.start_epoch:  # the previous epoch and its validation are done
            self._save_last(epoch_idx - 1, train_data)
        if epoch_idx >= self.epochs_to_run:  # RecBole loops to the config's epochs; the plan holds fewer
            raise PlanDone()
        every = self.configured_eval_step
        on_schedule = every > 0 and (epoch_idx + 1) % every == 0
        validates = on_schedule or (every > 0 and epoch_idx == self.epochs_to_run - 1)
        if self.deadline is not None:
            validates = self._keep_to_deadline(epoch_idx, validates)
        # RecBole's loop validates after this epoch when (epoch_idx + 1) % eval_step == 0 (never when eval_step <= 0);
        # it also names the best epoch from eval_step, so eval_step changes only for an epoch off the schedule
        self.eval_step = 1 if validates and not on_schedule else every
        with default_autocast_dtype(self.device.type, self.amp_dtype):
            loss = self._train_batches(train_data, epoch_idx, loss_func, show_progress)
        if self.pace is not None:
            self.pace["ended"], self.pace["validated"] = time.time(), validates
            self.pace["trained"].append(self.pace["ended"] - started)
        return loss

    def _train_batches(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """RecBole's ``Trainer._train_epoch`` (same steps, same returned loss) without its two waits for
        the device per batch, and with a backward pass per loss part for models that have ``loss_chunks``
        (see the class docstring)."""
        self.model.train()
        chunks = getattr(self.model, "loss_chunks", None) if loss_func is None else None
        loss_func = loss_func or self.model.calculate_loss
        batches = train_data
        if show_progress:
            desc = set_color(f"Train {epoch_idx + 1}/{self.epochs_to_run}{self._epochs_left_text(epoch_idx)}", "pink")
            batches = tqdm(train_data, total=len(train_data), ncols=100, desc=desc)
        if not self.config["single_spec"] and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.enable_scaler)
        autocast = functools.partial(torch.autocast, device_type=self.device.type, enabled=self.enable_amp)
        total, parts_returned = None, False  # total: [n_parts] float64 on the device
        for batch_idx, interaction in enumerate(batches):
            interaction = batch_to_device(self.model, interaction, self.device)
            self.optimizer.zero_grad()
            sync_loss = 0
            if not self.config["single_spec"] and chunks is None:
                self.set_reduce_hook()
                sync_loss = self.sync_grad_loss()
            if chunks is not None:
                losses = backward_parts(chunks(interaction), autocast, scaler.scale)  # backward passes done
                if not self.config["single_spec"]:
                    average_gradients(self.model)  # what DDP's reducer does, once after the parts' passes
            else:
                with autocast():
                    losses = loss_func(interaction)
            parts_returned = isinstance(losses, tuple)
            loss = sum(losses) if parts_returned else losses
            parts = losses if parts_returned else (loss,)
            # one-element losses of any shape, as .item() takes them (LightGCN's regulariser is [1])
            parts = torch.stack([part.detach().double().reshape(()) for part in parts])
            total = parts if total is None else total + parts
            if (batch_idx + 1) % self.nan_check_interval == 0:
                self._check_nan(loss if self.nan_check_interval == 1 else total.sum())
            if chunks is None:
                scaler.scale(loss + sync_loss).backward()
            if self.clip_grad_norm:
                scaler.unscale_(self.optimizer)  # clip the true gradients, not the loss-scaled ones (a no-op when the scaler is off)
                clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            scaler.step(self.optimizer)
            scaler.update()
            if self.gpu_available and show_progress:
                batches.set_postfix_str(set_color("GPU RAM: " + get_gpu_usage(self.device), "yellow"))
        if total is None:
            return None
        if self.nan_check_interval > 1:
            self._check_nan(total.sum())  # NaN in any batch's loss makes the sum NaN
        total = total.tolist()  # the epoch's one wait for the device
        return tuple(total) if parts_returned else total[0]

    def _epochs_left_text(self, epoch_idx):
        """``" (<= 12.0 min left)"``: the remaining epochs at the mean pace of this process's
        finished ones (training and validation), an upper bound when early stopping may end the run
        sooner; empty before the first epoch has finished."""
        now = time.perf_counter()
        if self._fit_started is None or epoch_idx == self.start_epoch:
            self._fit_started = now
            return ""
        per_epoch = (now - self._fit_started) / (epoch_idx - self.start_epoch)
        left = per_epoch * (self.epochs_to_run - epoch_idx)
        return f" (<= {left / 60:.1f} min left)" if left >= 60 else f" (<= {left:.0f} s left)"

    def _save_last(self, epoch, train_data):
        generator = getattr(train_data, "generator", None)
        own = random_state(self.device, generator)
        rng = [own]  # one per process: DDP ranks draw from streams seeded apart (seed + rank)
        if not self.config["single_spec"]:
            rng = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(rng, own)
            if torch.distributed.get_rank() != 0:
                return
        best_result = self.best_valid_result
        state = {
            **self.checkpoint_header(),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": None if best_result is None else {k: float(v) for k, v in best_result.items()},
            "best_model_file": self.saved_model_file,
            "train_loss_dict": {k: plain_value(v) for k, v in self.train_loss_dict.items()},
            "state_dict": self.model.state_dict(),
            "other_parameter": encode_other_parameter(self.model.other_parameter()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler_steps": self.scheduler.last_epoch if self.scheduler is not None else None,
            "schedule": self.schedule.state() if self.scheduler is not None else None,
            "planned_epochs": self.planned_epochs,
            "rng": rng,
            "curve": self.curve.state(),
            "curve_minutes": self.curve_minutes(),
        }  # fmt: skip
        if epoch == self.start_epoch:
            self.logger.info(f"state after every epoch: {self.last_model_file} (continue a stopped run with "
                             f"--resume_from={self.last_model_file})")
        save_checkpoint(state, self.last_model_file)

    def resume_checkpoint(self, path):
        """Continue a stopped run from its ``-last.pth`` file: the next epoch, the same schedule and
        random streams, the same best checkpoint file and run id. Replaces RecBole's version, which restores
        neither the schedule nor the random generators.

        Every input is checked before anything changes: :func:`check_resume_file` (format, model, dataset,
        config, best checkpoint), the data (:func:`check_data_fingerprint`), and the number of processes that
        wrote it. A ``ValueError`` says which input is wrong."""
        # on the CPU: random generator states must stay CPU tensors (mapped to a GPU, resuming there failed);
        # load_state_dict moves weights and optimiser state to the model's device
        checkpoint = check_resume_file(self.config, path, load_checkpoint(path))
        if self.data_fingerprint is not None:
            check_data_fingerprint(checkpoint.get("data"), self.data_fingerprint, path)
        rng = self._own_rng_state(checkpoint["rng"], path)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(decode_other_parameter(self.model, checkpoint.get("other_parameter")))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint["best_valid_result"]
        self.train_loss_dict.update(checkpoint["train_loss_dict"])
        self.saved_model_file = checkpoint["best_model_file"]
        self.last_model_file = str(path)
        self.run_id = self.config["run_id"] = checkpoint["run_id"]  # the same run goes on
        set_random_state(rng, self.device)  # the loader's generator: in fit(), once the loader is known
        # a file from before "schedule" was kept: its schedule is the fresh one over its planned epochs
        self.resumed = {"scheduler_steps": checkpoint["scheduler_steps"], "schedule": checkpoint.get("schedule"),
                        "loader_generator": rng["loader_generator"]}
        self.curve = LearningCurve(self.curve_path(), checkpoint.get("curve", ()))
        self.minutes_before = checkpoint.get("curve_minutes", 0.0)
        self.planned_epochs = checkpoint.get("planned_epochs")  # time_budget: the run's schedule spans these
        self.logger.info(f"resumed run {self.run_id} from {path}: epoch {self.start_epoch} next, best checkpoint "
                         f"{self.saved_model_file}")

    def _own_rng_state(self, states, path):
        """This process's random generators from a ``-last.pth`` file's per-process list."""
        world = 1 if self.config["single_spec"] else torch.distributed.get_world_size()
        if len(states) != world:
            raise ValueError(f"{path} was written by a run of {len(states)} process(es), this one has {world}: "
                             f"resume it with the same number of processes (nproc / world_size), each "
                             f"continuing its own random streams")
        return states[0 if world == 1 else torch.distributed.get_rank()]
