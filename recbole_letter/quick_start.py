"""The one place that builds config, data, model and trainer.

``run("SASRec", "ml-100k")`` trains and evaluates one model; ``run_models(["SASRec", "LETTER_TIGER"],
"Beauty")`` runs several on the same split and returns their results side by side. Everything goes
through RecBole's ``Config`` / ``create_dataset`` (``compat``'s, which never unpickles) / ``data_preparation`` / trainer; ``recbole.quick_start``
itself is never imported (it imports ray, which needs numpy<2).
"""

import contextlib
import datetime
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from logging import getLogger

import torch
import torch.multiprocessing as mp
import yaml
from recbole.config import Config
from recbole.data import data_preparation
from recbole.trainer import Trainer
from recbole.utils import EvaluatorType, InputType, ModelType, get_trainer, init_logger, init_seed
from tqdm import tqdm

import recbole_letter  # noqa: F401  (applies the compatibility fixes)
from recbole_letter import compat, config_check, plan
from recbole_letter.common import PROPERTIES_DIR, settle_enable_amp
from recbole_letter.data import filter_report
from recbole_letter.data.atomic_check import check_atomic_files_rows
from recbole_letter.model import PROPERTY_BASE, canonical_name, get_model_class, is_generative
from recbole_letter.tokenizer.cache import file_sha256
from recbole_letter.tokenizer.trainer import tokenize_only
from recbole_letter.trainer import (LetterTrainer, SafeCheckpoints, agreed, check_data_fingerprint, check_resume_file,
                                    config_digest, config_values, load_checkpoint, new_run_id)

EMBEDDED_DATASETS = ("ml-100k",)  # ship inside the recbole package
DISTRIBUTED_KEYS = ("nproc", "world_size", "ip", "port", "offset")


class LetterConfig(Config):
    """RecBole's ``Config`` with three changes.

    * It does not read ``sys.argv`` itself: ``run_recbole_letter.py`` parses the command line and
      passes the overrides in ``config_dict`` (RecBole's own parsing would pick up pytest's or our
      own flags).
    * ``config_dict`` is taken as given: RecBole would ``eval`` its strings (``build_config`` has parsed
      them as literals already).
    * DDP without a GPU uses the gloo backend on CPU (RecBole hard-codes nccl + cuda).

    :meth:`settle_amp` keeps ``enable_amp`` as the user gave it in ``amp_requested`` (``auto`` included;
    every checkpoint's header records it, so a resumed or evaluated ``auto`` run settles again on its new
    machine) and what :func:`~recbole_letter.common.settle_enable_amp` made of it in ``amp_note`` (logged once
    the logger is up).
    """

    amp_requested = None
    amp_note = None

    def __init__(self, *args, **kwargs):
        self.started = time.time()  # the run's start: time_budget counts from here (data and tokenizer included)
        super().__init__(*args, **kwargs)

    def settle_amp(self):
        """``enable_amp`` -> the bool for this config's device (see the class docstring)."""
        self.amp_requested = self["enable_amp"]
        self.amp_note = settle_enable_amp(self)

    def _load_cmd_line(self):
        return {}

    def _load_variable_config_dict(self, config_dict):
        # RecBole eval()s every string of config_dict here; ours arrive parsed (config_check.parse_value)
        return dict(config_dict or {})

    def _init_device(self):
        distributed = "local_rank" in self.final_config_dict
        if distributed and not torch.cuda.is_available():
            cfg = self.final_config_dict
            torch.distributed.init_process_group(
                backend="gloo",
                rank=cfg["local_rank"] + cfg["offset"],
                world_size=cfg["world_size"],
                init_method=f"tcp://{cfg['ip']}:{cfg['port']}",
            )
            cfg["gpu_id"] = ""
            cfg["device"] = torch.device("cpu")
            cfg["single_spec"] = False
            if cfg["local_rank"] != 0:
                cfg["state"] = "error"
                cfg["show_progress"] = False
                cfg["verbose"] = False
            return
        super()._init_device()


def parse_overrides(args):
    """``--key=value`` strings -> checked config dict. Values are parsed as literals
    (``config_check.parse_value``: numbers, quoted strings, lists, dicts, True/False, ~), never ``eval``'d;
    an unknown key, a wrong type or an out-of-range value is a ``config_check.ConfigError``."""
    return config_check.check_values(config_check.parse_args(args))


def property_files(model, dataset, profile=None):
    """The layered property files for (model, dataset), most general first: overall, tokenizer
    (generators), dataset, model, then the ``profile``'s files (``properties/profile/<profile>/``:
    ``tokenizer.yaml`` and the model's, for generators; ``None``: none)."""
    files = [PROPERTIES_DIR / "overall.yaml"]
    if is_generative(model):  # tokenizer defaults; a dataset file may tune them (e.g. text_fields)
        files.append(PROPERTIES_DIR / "tokenizer.yaml")
    files.append(PROPERTIES_DIR / "dataset" / f"{dataset}.yaml")
    name = canonical_name(model)
    models = [PROPERTY_BASE[name], name] if name in PROPERTY_BASE else [name]
    files += [PROPERTIES_DIR / "model" / f"{m}.yaml" for m in models]
    if profile is not None:
        folder = PROPERTIES_DIR / "profile" / str(profile)
        if not folder.is_dir():
            known = sorted(p.name for p in (PROPERTIES_DIR / "profile").iterdir() if p.is_dir())
            raise ValueError(f"profile={profile!r}: unknown profile; expected one of {known} or ~")
        if is_generative(model):
            files += [folder / "tokenizer.yaml"] + [folder / f"{m}.yaml" for m in models]
    return [str(f) for f in files if f.is_file()]


def chosen_profile(model, dataset, config_files=None, config_dict=None):
    """The ``profile`` key as the layered config will hold it: the command line over the user's files over
    the dataset's and the overall property file (read here because it decides which files are layered)."""
    if "profile" in (config_dict or {}):
        return config_dict["profile"]
    for path in reversed(list(config_files or [])):
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if isinstance(values, dict) and "profile" in values:
            return values["profile"]
    for path in reversed(property_files(model, dataset)):
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if "profile" in values:
            return values["profile"]
    return None


def known_datasets(data_path=None):
    """Datasets with a property file, those inside recbole, and ``<data_path>/<name>/<name>.inter`` folders."""
    return sorted(set(config_check.known_datasets(data_path)) | set(EMBEDDED_DATASETS))


def build_config(model, dataset, config_files=None, config_dict=None):
    """Config layered as overall -> tokenizer -> dataset -> model -> profile (``profile``; see
    :func:`property_files`) -> ``config_files`` -> ``config_dict``.

    The model name must match exactly; keys and values of ``config_files`` and ``config_dict`` are checked
    (``config_check``: known key, type, range; a ``ConfigError`` otherwise). String values of
    ``config_dict`` are parsed as literals (``config_check.parse_value``) where RecBole would ``eval`` them.

    Args:
        model: a model name, exactly as spelled in ``properties/model/`` or by RecBole (``"SASRec"``).
        dataset: a dataset name; its folder lies under ``data_path`` (ml-100k ships with recbole).
        config_files: more YAML files, applied in order after the shipped ones.
        config_dict: the last layer: key -> value, or key -> string to parse as a literal.

    Returns:
        A RecBole ``Config`` (:class:`LetterConfig`), its device set up (seeds are set where the data loads).
    """
    config_check.check_model_name(model)
    for path in config_files or []:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        config_check.check_values(config_check.load_yaml_file(path), source=f"config file {path}: ")
    config_dict = config_check.check_values({k: config_check.parse_value(v) for k, v in (config_dict or {}).items()})
    model_class = get_model_class(model)
    config = LetterConfig(
        model=model_class,
        dataset=dataset,
        config_file_list=property_files(model, dataset, chosen_profile(model, dataset, config_files, config_dict))
        + list(config_files or []),
        config_dict=config_dict,
    )
    config_check.check_dataset(config["dataset"], config["data_path"])
    config_check.check_final(config, model)
    check_atomic_files(config)
    config.settle_amp()  # enable_amp: auto -> True / False for this device
    # one id per run, set before init_logger hashes the config into the log file's name (so two runs started
    # in the same second log apart too); it names the checkpoints and the result rows
    config["run_id"] = new_run_id(config["model"], config["dataset"])
    return config


def config_from_values(values):
    """A ``LetterConfig`` holding a checkpoint's config (its final values as plain data,
    ``trainer.config_values``) again: RecBole's enums back from their names; ``device`` (stored as text)
    is set by ``_init_device``, which the caller runs."""
    final = dict(values)
    for key, kind in (("MODEL_TYPE", ModelType), ("MODEL_INPUT_TYPE", InputType), ("eval_type", EvaluatorType)):
        if key in final:
            final[key] = kind[final[key]]
    config = LetterConfig.__new__(LetterConfig)  # RecBole's __init__ would layer the property files again
    config._init_parameters_category()
    config.final_config_dict = final
    config.model, config.dataset = final["model"], final["dataset"]
    config.model_class = get_model_class(final["model"])
    return config


def check_atomic_files(config):
    """Fail with one line when the dataset's atomic files are missing, empty or lack a column. The item
    text columns (``text_fields``) are required only where a tokenizer will encode them: a generator
    without ``item_codes_file``, or ``tokenize_only``; a baseline or a generator on given codes runs
    without them."""
    dataset, data_path = config["dataset"], config["data_path"]
    needs_text = is_generative(config["model"]) and (config["tokenize_only"] or not config["item_codes_file"])
    optional = set() if needs_text else set(config["text_fields"] or [])
    for suffix, columns in (config["load_col"] or {}).items():
        path = os.path.join(data_path, f"{dataset}.{suffix}")
        if not os.path.isfile(path):
            if suffix != "inter":
                raise FileNotFoundError(f"dataset {dataset!r}: load_col asks for {suffix!r} but {path} does not exist")
            raise FileNotFoundError(
                f"dataset {dataset!r} not found: no file {path}. Known datasets: {', '.join(known_datasets())}; "
                "set data_path, or convert raw data with `python -m recbole_letter.data convert` (dataset/README.md)"
            )
        with open(path, encoding="utf-8") as f:
            header, first_row = f.readline().rstrip("\n"), f.readline()
        if not first_row.strip():
            raise ValueError(f"dataset {dataset!r}: {path} has no rows")
        present = [field.split(":")[0] for field in header.split(config["field_separator"])]
        missing = [c for c in columns if c not in present and c not in optional]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the file has {present}")


def load_data(config):
    """Filtered dataset and the three loaders for ``config``: the one way data loads, for training
    (:func:`prepare`) and for ``--checkpoint`` (:func:`evaluate_checkpoint`). The atomic files are checked
    first, their columns and then row by row (RecBole would fill or drop a bad row quietly); the dataset is
    built from them (``compat.create_dataset``: never a pickled one), and what each of RecBole's filters
    removed is logged (a warning above 1 % of the interactions).

    Args:
        config: a config from :func:`build_config`.

    Returns:
        ``(full_dataset, train_data, valid_data, test_data)``: RecBole's dataset and its three loaders.
    """
    check_atomic_files(config)
    check_atomic_files_rows(config)
    with filter_report.recording_filters() as filter_steps:
        full_dataset = compat.create_dataset(config)
    getLogger().info(full_dataset)
    filter_report.log_filter_report(config, full_dataset, filter_steps)
    train_data, valid_data, test_data = data_preparation(config, full_dataset)
    return full_dataset, train_data, valid_data, test_data


def data_fingerprint(config, full_dataset):
    """What a checkpoint records of the data it was trained on: users, items and interactions after
    RecBole's filters, and the sha256 of each atomic file loaded (content, not path: moved data is the same
    data). ``--checkpoint`` and ``--resume_from`` compare it (:func:`check_data_fingerprint`)."""
    suffixes = ("inter", "user", "item") if config["load_col"] is None else sorted(config["load_col"])
    files = {}
    for suffix in suffixes:
        path = os.path.join(config["data_path"], f"{config['dataset']}.{suffix}")
        if os.path.isfile(path):
            files[f"{config['dataset']}.{suffix}"] = file_sha256(path)
    return {"users": int(full_dataset.user_num), "items": int(full_dataset.item_num),
            "interactions": int(full_dataset.inter_num), "sha256": files}


def prepare(model, dataset, config_files=None, config_dict=None):
    """Config, filtered dataset and the three loaders of one (model, dataset) pair (:func:`load_data`)."""
    return _prepare_data(build_config(model, dataset, config_files, config_dict))


def check_resume_from(config):
    """When ``resume_from`` is set, check that file against this run right after the config is built, before
    the data loads and the tokenizer stage runs (each may take long): a ``-last.pth`` of the same model,
    dataset and config whose best checkpoint exists (``trainer.check_resume_file``), for a model whose
    trainer can resume. The data is compared once it is loaded (``LetterTrainer.resume_checkpoint``)."""
    if not config["resume_from"]:
        return
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if trainer_class is not Trainer:
        raise ValueError(f"resume_from: {config['model']} is trained by {trainer_class.__name__}, which cannot resume")
    check_resume_file(config, config["resume_from"], before_data=True)


def _init_logger(config):
    """RecBole's ``init_logger``, with ``./log/<model>/`` made first: RecBole checks, then creates it, and
    DDP ranks starting together race there (``FileExistsError``). Then logs the config's ``amp_note``."""
    os.makedirs(os.path.join("log", config["model"]), exist_ok=True)
    init_logger(config)
    if config.amp_note:
        level, line = config.amp_note
        getattr(getLogger(), level)(line)


def _prepare_data(config):
    init_seed(config["seed"], config["reproducibility"])
    _init_logger(config)
    full_dataset, train_data, valid_data, test_data = load_data(config)
    return config, full_dataset, train_data, valid_data, test_data


@functools.lru_cache(maxsize=None)
def safe_trainer_class(trainer_class):
    """RecBole's ``trainer_class`` with :class:`~recbole_letter.trainer.SafeCheckpoints` first among its bases
    (one class per RecBole class, so ``isinstance`` holds across runs)."""
    return type(trainer_class.__name__, (SafeCheckpoints, trainer_class), {"__module__": __name__})


TOKENIZER_WAIT = datetime.timedelta(hours=24)  # how long the other ranks wait for rank 0's tokenizer stage


def tokenizer_stage(config, model_class, train_dataset):
    """The tokenizer stage of a generator: its item codes, built or read back once per run.

    Calls the model class's hook (``GenerativeRecommender.tokenize``) on the training split. Under DDP
    rank 0 builds (or loads) the codes while the other ranks wait, then read them from the cache rank 0
    wrote. They wait in a group of their own with a timeout of :data:`TOKENIZER_WAIT`: the default
    group's (30 minutes) is shorter than a tokenizer may take, and would end the run with the codes
    unbuilt. On a CPU rank 0 meanwhile uses the threads of this machine's waiting ranks, which sit idle.

    Args:
        config: the run's config.
        model_class: a :class:`GenerativeRecommender` subclass (``LETTER_TIGER``, ``TIGER``, ...).
        train_dataset: the training split (``train_data.dataset``); the tokenizer never sees valid or test.

    Returns:
        An ``ItemCodes``: each item's codes and the codebook sizes.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed:
        return model_class.tokenize(config, train_dataset)
    waiting = torch.distributed.new_group(backend="gloo", timeout=TOKENIZER_WAIT)
    if torch.distributed.get_rank() != 0:
        torch.distributed.barrier(group=waiting)  # rank 0 has the codes in its cache
        item_codes = model_class.tokenize(config, train_dataset)
    else:
        with _threads_of_waiting_ranks(config):
            item_codes = model_class.tokenize(config, train_dataset)
        torch.distributed.barrier(group=waiting)
    # the group stays until the rank ends (_end_rank): destroying it right after its barrier could fail a
    # rank still leaving that barrier (pytorch/gloo#155)
    return item_codes


@contextlib.contextmanager
def _threads_of_waiting_ranks(config):
    """Rank 0 of a CPU run takes the threads of the ranks on its machine (``nproc``) while they wait,
    up to the cores this process may use; its own count comes back afterwards."""
    own = torch.get_num_threads()
    if config["device"].type == "cpu":
        torch.set_num_threads(max(own, min(own * int(config["nproc"]), usable_cores())))
    try:
        yield
    finally:
        torch.set_num_threads(own)


def build_model(config, train_dataset, item_codes=None):
    """The model of ``config["model"]`` on ``train_dataset`` (the training split), on the config's device.

    A generator gets ``item_codes``, or those of the tokenizer stage (:func:`tokenizer_stage`) when none
    are given; its constructor only receives them. After the stage the random streams are seeded again, as
    before it (``seed`` + ``local_rank``): a tokenizer that trains draws from them and one read from the cache
    does not, and the model's weights (so the run's result) must not depend on which happened.

    Args:
        config: the run's config.
        train_dataset: the training split.
        item_codes: ``ItemCodes`` to use (e.g. read from a checkpoint), or ``None`` for the tokenizer stage.

    Returns:
        The model, on ``config["device"]``.
    """
    model_class = get_model_class(config["model"])
    if not is_generative(config["model"]):
        return model_class(config, train_dataset).to(config["device"])
    if item_codes is None:
        item_codes = tokenizer_stage(config, model_class, train_dataset)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    return model_class(config, train_dataset, item_codes).to(config["device"])


def build_trainer(config, model, train_dataset=None):
    """The trainer RecBole would pick for the model, with checkpoints that load with ``weights_only=True``:
    ``LetterTrainer`` in place of RecBole's plain ``Trainer``, and every other ``Trainer`` subclass
    (``TraditionalTrainer`` for Pop / ItemKNN, ``KGTrainer``, ...) with :class:`SafeCheckpoints`.
    ``train_dataset`` (the training split) is needed by ``exclude_seen_items`` for sequential models.

    Args:
        config: the run's config.
        model: the model from :func:`build_model`.
        train_dataset: the training split, or ``None`` when no seen items are to be removed.

    Returns:
        The trainer, with a run id (``trainer.run_id``) naming its checkpoints and learning curve.
    """
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if trainer_class is Trainer:
        trainer_class = LetterTrainer
    elif issubclass(trainer_class, Trainer):
        trainer_class = safe_trainer_class(trainer_class)
    else:
        raise ValueError(f"{config['model']} is trained by RecBole's {trainer_class.__name__}, whose checkpoints "
                         f"pickle Python objects; this package only writes and loads tensors and plain values")
    trainer = trainer_class(config, model)
    if config["exclude_seen_items"] and config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        if not hasattr(trainer, "set_seen_items"):
            raise ValueError(f"exclude_seen_items: {config['model']}'s trainer ({trainer_class.__name__}) cannot "
                             f"remove seen items; set exclude_seen_items: False")
        if train_dataset is not None:
            trainer.set_seen_items(train_dataset)
    return trainer


def _as_floats(result):
    return {k: float(v) for k, v in (result or {}).items()}


def show_plan(config, full_dataset, train_data, valid_data, test_data):
    """Print the run's stages with a probe's estimate each (``show_plan``; rank 0 only)."""
    if not config["show_plan"] or config["local_rank"] != 0:
        return
    busy = plan.busy_cpu_warning(config["device"])  # the load before the probes add their own
    stages = plan.run_stages(config, get_model_class(config["model"]), train_data, valid_data, test_data)
    print(plan.format_plan(plan.plan_title(config, full_dataset), stages), flush=True)
    if config["time_budget"] is not None:
        print(f"  time_budget {config['time_budget']:g} min from the run's start: the epochs are cut to what fits "
              f"(probed again with every process at work, then planned again from the epochs as they run)", flush=True)
    if busy:
        print(busy, flush=True)


def apply_time_budget(config, model, trainer, train_data, valid_data, test_data):
    """``time_budget`` (minutes, counted from the run's start): probe a few training and validation batches of
    this run, then let the trainer size its epochs to the time left (:meth:`LetterTrainer.plan_to_deadline`).
    Under DDP every rank probes at once (as they will train: sharing the machine) and the slowest estimates
    count. Returns the epochs planned, or None without a budget."""
    if config["time_budget"] is None:
        return None
    if not isinstance(trainer, LetterTrainer):
        raise ValueError(f"time_budget: {config['model']} is trained by {type(trainer).__name__}, which cannot "
                         f"plan its epochs to a deadline")
    deadline = agreed(config.started + 60 * float(config["time_budget"]))
    train_epoch, valid_pass = plan.probe_epoch_seconds(config, model, train_data, valid_data)
    test_pass = valid_pass * len(test_data) / max(1, len(valid_data))
    estimates = [(train_epoch, valid_pass, test_pass)]
    if not config["single_spec"]:  # an object collective: gloo and NCCL alike
        estimates = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(estimates, (train_epoch, valid_pass, test_pass))
    return trainer.plan_to_deadline(deadline, *(max(column) for column in zip(*estimates)))


def _run_single(model, dataset, config_files=None, config_dict=None, saved=True, queue=None):
    config = build_config(model, dataset, config_files, config_dict)
    check_resume_from(config)
    config, full_dataset, train_data, valid_data, test_data = _prepare_data(config)
    logger = getLogger()
    _log_process_layout(config)
    show_plan(config, full_dataset, train_data, valid_data, test_data)
    if config["tokenize_only"] and is_generative(model):
        report = tokenize_only(config, train_data.dataset, eval_data=valid_data)
        result = {"model": config["model"], "dataset": dataset, "tokenizer_report": report}
        if queue is not None and config["local_rank"] == 0:
            queue.put(result)
        return result

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_obj = build_model(config, train_data.dataset)
    logger.info(model_obj)
    trainer = build_trainer(config, model_obj, train_data.dataset)
    trainer.data_fingerprint = data_fingerprint(config, full_dataset)  # in every checkpoint's header
    logger.info(f"run id: {trainer.run_id}")
    # RecBole never closes the trainer's TensorBoard writer; its thread would outlive the run
    with contextlib.closing(trainer.tensorboard):
        if config["resume_from"]:
            if not isinstance(trainer, LetterTrainer):
                raise ValueError(f"resume_from: {config['model']} is trained by {type(trainer).__name__}, "
                                 f"which cannot resume")
            trainer.resume_checkpoint(config["resume_from"])
        apply_time_budget(config, model_obj, trainer, train_data, valid_data, test_data)

        first_epoch = trainer.start_epoch  # > 0 when resumed: earlier epochs ran in another process
        start = time.perf_counter()
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
        test_seconds = time.perf_counter() - start
    epochs = len(trainer.train_loss_dict)
    result = {
        "run_id": trainer.run_id,
        "mode": "train",
        "config_digest": config_digest(config_values(config)),
        "model": config["model"],
        "dataset": dataset,
        "best_valid_score": float(best_valid_score),
        "best_valid_result": _as_floats(best_valid_result),
        "test_result": _as_floats(test_result),
        "epochs": epochs,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(1, epochs - first_epoch),
        "test_seconds": test_seconds,
        "checkpoint": trainer.saved_model_file if saved else None,
        "learning_curve": trainer.curve.path if saved and trainer.curve.points else None,
        "epochs_planned": getattr(trainer, "planned_epochs", None),  # time_budget
        "stopped_at_deadline": getattr(trainer, "stopped_at_deadline", None),
    }
    logger.info(f"best valid: {result['best_valid_result']}")
    logger.info(f"test result: {result['test_result']}")
    if not config["single_spec"]:
        # every rank done with its collectives before any ends (a gloo rank that exits while its peer still
        # talks to it can abort: "terminate called without an active exception", seen once in tests); the
        # process group is not destroyed: the spawned rank ends without teardown (_end_rank)
        torch.distributed.barrier()
    if queue is not None and config["local_rank"] == 0:
        queue.put(result)
    return result


def free_port():
    """A TCP port free on this machine now, for a process group of one machine's processes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def end_with_parent(parent_pid, interval=1.0):
    """End this process soon after ``parent_pid``, the process that spawned it, is gone.

    A signal to the parent of a DDP run alone (``kill <pid>``, ``timeout``, a scheduler that signals only
    the main process; Ctrl-C reaches every process of the terminal's group) ends the parent, and its
    spawned ranks would train on as orphans, writing the run's files, with nobody to read their result.
    A daemon thread checks the parent every ``interval`` seconds; once it has changed, this process sends
    itself SIGTERM (without a handler: ends at once; checkpoints are written atomically, so the last
    complete one stays)."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _start_rank(parent_pid, nproc):
    """What every spawned rank does first: end with its parent (``end_with_parent``), take its share of the
    cores (``share_cores``), and give tqdm a thread lock in place of the ``multiprocessing`` one it would make
    for its first bar. That lock is a named semaphore, which only the exit handlers ``_end_rank`` skips would
    release; the parent's resource tracker then warned at every DDP run's end ("There appear to be 1 leaked
    semaphore objects to clean up at shutdown"). A spawned rank shares its lock with no other process, so a
    thread lock guards its bars as well."""
    end_with_parent(parent_pid)
    share_cores(nproc)
    tqdm.set_lock(threading.RLock())


def _end_rank():
    """End a spawned DDP rank whose work is done and whose result is queued, without tearing anything down.

    Destroying a gloo process group can deadlock: the group's destructor joins its worker threads while
    holding the GIL (when the DDP model's reducer holds the group's last reference and is freed from
    Python), and a worker thread still releasing the last collective's work, whose tensors are Python
    objects, waits for the GIL (seen once in the test suite: a rank hung in ``~ProcessGroupGloo``, its
    parent waiting in ``mp.spawn`` until the test's timeout). The rank's files are complete (checkpoints
    and curves are written atomically, the TensorBoard writer is closed); the logs are flushed here, and
    the operating system ends the rest: exit status 0, as ``mp.spawn`` expects."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # where a user sets torch's thread count


def usable_cores():
    """The logical CPUs this process may run on (``os.cpu_count()`` where the OS cannot say)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def share_cores(nproc):
    """Give this rank its share (at least 1) of the threads torch would use, bounded by the CPUs this process
    may run on, when ``nproc`` ranks share a machine and no ``THREAD_VARIABLES`` is set. Otherwise each rank
    takes every core, and ``nproc`` ranks of that many threads wait for one another at every parallel region
    (docs/reliability.md, "Runs, checkpoints and writes")."""
    if int(nproc) > 1 and not any(os.environ.get(name) for name in THREAD_VARIABLES):
        torch.set_num_threads(max(1, min(torch.get_num_threads(), usable_cores()) // int(nproc)))


def _log_process_layout(config):
    """Rank 0's log line of a DDP run: processes on this machine and threads of each."""
    if config["single_spec"]:
        return
    threads = torch.get_num_threads()
    given = [f"{name}={os.environ[name]}" for name in THREAD_VARIABLES if os.environ.get(name)]
    getLogger().info(f"DDP: {config['nproc']} processes here, {threads} torch thread{'s' * (threads != 1)} each "
                     f"({', '.join(given) or 'the cores shared out'})")


def _spawned_worker(rank, parent_pid, model, dataset, config_files, config_dict, saved, queue):
    _start_rank(parent_pid, config_dict["nproc"])
    _run_single(model, dataset, config_files, {**config_dict, "local_rank": rank}, saved, queue)
    _end_rank()


def run(model, dataset, config_files=None, config_dict=None, saved=True):
    """Train and evaluate one model; returns its result dict.

    ``nproc > 1`` (in ``config_dict`` or a config file) trains with RecBole's DDP path (one process per
    rank, spawned here; gloo on CPU, nccl on GPUs). ``world_size`` / ``ip`` / ``port`` / ``offset`` as in
    RecBole for several machines; on one machine ``port`` defaults to a free one (RecBole's 29500 would
    collide between runs).

    Args:
        model: a model name (see :func:`build_config`).
        dataset: a dataset name.
        config_files: more YAML files, after the shipped ones.
        config_dict: overrides, the last layer.
        saved: write checkpoints and the learning curve (``checkpoint_dir``).

    Returns:
        A dict: ``run_id``, ``model``, ``dataset``, ``best_valid_result``, ``test_result`` (metric -> float),
        ``epochs``, ``train_seconds``, ``seconds_per_epoch``, ``test_seconds``, ``checkpoint`` and
        ``learning_curve`` (paths, or ``None`` when not saved), ``epochs_planned`` and ``stopped_at_deadline``
        (``time_budget``: the epochs the plan held, and why the run stopped before them; ``None`` without a
        budget). Under DDP rank 0's dict, or ``None``.
    """
    # the process layout may come from a config file too (RecBole reads it from the command line only);
    # config_dict wins, as in the config itself
    from_files = {key: value for path in config_files or [] if os.path.isfile(path)
                  for key, value in config_check.load_yaml_file(path).items() if key in DISTRIBUTED_KEYS}
    config_dict = {**from_files, **(config_dict or {})}
    nproc = int(config_dict.get("nproc", 1))
    world_size = int(config_dict.get("world_size", -1))
    if nproc == 1 and world_size <= 0:
        return _run_single(model, dataset, config_files, config_dict, saved)
    config_dict.setdefault("world_size", world_size if world_size > 0 else nproc)
    config_dict.setdefault("ip", "127.0.0.1")
    # one machine: a free port, so that two runs side by side do not collide (several machines agree on one)
    config_dict.setdefault("port", free_port() if config_dict["world_size"] == nproc else "29500")
    config_dict.setdefault("offset", 0)
    config_dict["nproc"] = nproc
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(
        _spawned_worker,
        args=(os.getpid(), model, dataset, config_files, config_dict, saved, queue),
        nprocs=nproc,
        join=True,
    )
    return None if queue.empty() else queue.get()


def evaluate_checkpoint(path, config_dict=None, splits=("valid", "test")):
    """Evaluate a checkpoint written by a run (valid and test) without training.

    The checkpoint carries its config (plain values; it is loaded with ``weights_only=True``, see
    ``trainer.load_checkpoint``); ``config_dict`` overrides keys of it (e.g. ``eval_batch_size``;
    ``data_path`` as for training). It runs on this machine's device, in one process, or on a CPU machine
    with ``config_dict["nproc"] > 1`` in that many (DDP: each evaluates its share of the users, and the
    metrics are reduced as in training's validation, so they may differ from one process's in the 4th
    decimal: each rank rounds its own, and RecBole's sampler repeats a few users when their number does
    not divide evenly; processes of one thread each use a CPU's cores better than one process's threads,
    docs/results.md "CPU recipe"; ``port`` as for :func:`run`).
    Useful after a run was stopped: its best-so-far checkpoint is in ``checkpoint_dir``.
    The result names the run the checkpoint belongs to (``run_id``).

    Args:
        path: a ``<run id>.pth`` or ``<run id>-last.pth`` file written by this package.
        config_dict: keys that may differ from the stored config, or ``None``.
        splits: the splits to evaluate, of ``"valid"`` and ``"test"``.

    Returns:
        A dict like :func:`run`'s, with ``mode`` ``"evaluate"``: the metrics of the checkpoint on each split
        asked for (``best_valid_result``, ``test_result``) and the seconds each evaluation took, loading the
        weights included (``valid_seconds``, ``test_seconds``; under DDP rank 0's, which waits for the
        others), and the number of ``processes`` that evaluated.
    """
    config_dict = config_check.check_values(dict(config_dict or {}))
    unknown = set(splits) - {"valid", "test"}
    if unknown or not splits:
        raise ValueError(f"splits: 'valid' and/or 'test', got {sorted(unknown) or 'none'}")
    nproc = int(config_dict.pop("nproc", 1))
    if nproc == 1:
        return _evaluate_checkpoint(path, config_dict, splits)
    if torch.cuda.is_available():
        raise ValueError("evaluating a checkpoint in several processes runs on a CPU machine; on a GPU, use nproc 1")
    port = str(config_dict.pop("port", None) or free_port())
    layout = {"nproc": nproc, "world_size": nproc, "ip": "127.0.0.1", "port": port, "offset": 0}
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_evaluate_worker, args=(os.getpid(), path, config_dict, splits, layout, queue), nprocs=nproc, join=True)
    return queue.get()


def _evaluate_worker(rank, parent_pid, path, config_dict, splits, layout, queue):
    _start_rank(parent_pid, layout["nproc"])
    result = _evaluate_checkpoint(path, config_dict, splits, layout={**layout, "local_rank": rank})
    if rank == 0:
        queue.put(result)
    _end_rank()


def _evaluate_checkpoint(path, config_dict, splits, layout=None):
    checkpoint = load_checkpoint(path)
    # the stored config passes the checks a user's config does (no key that would unpickle a file, ranges, ...)
    config_check.check_stored_config(checkpoint["config"], source=f"checkpoint {path}: stored config: ")
    config = config_from_values(checkpoint["config"])
    for key, value in config_dict.items():
        # data_path means what it means for training, the folder holding the dataset's folder (the saved
        # config holds the joined path, as RecBole's Config makes it)
        config[key] = os.path.join(value, config["dataset"]) if key == "data_path" else value
    # this machine's device, chosen by RecBole's own _init_device (gpu_id "" = the CPU): the run's may not
    # exist here (a GPU run evaluated on a CPU; DDP's cuda:<rank> and process group); under ``layout`` (a
    # rank's DDP keys) _init_device joins this evaluation's process group
    config.final_config_dict.pop("local_rank", None)
    config.final_config_dict.update(layout or {})
    config._init_device()
    # the run's enable_amp on this machine's device: an auto run settles again here, unless overridden
    if checkpoint.get("amp_requested") == "auto" and "enable_amp" not in config_dict:
        config["enable_amp"] = "auto"
    config.settle_amp()
    init_seed(config["seed"], config["reproducibility"])
    _init_logger(config)
    _log_process_layout(config)
    full_dataset, train_data, valid_data, test_data = load_data(config)
    check_data_fingerprint(checkpoint.get("data"), data_fingerprint(config, full_dataset), path)
    model_class = get_model_class(config["model"])
    # a generator's checkpoint carries its codes: evaluating never runs (or needs the cache of) the tokenizer
    codes = model_class.codes_from_state_dict(checkpoint["state_dict"]) if is_generative(config["model"]) else None
    model = build_model(config, train_data.dataset, item_codes=codes)
    trainer = build_trainer(config, model, train_data.dataset)
    trainer.tensorboard.close()  # RecBole opens its writer in the constructor; evaluating writes nothing to it
    result = {
        "run_id": checkpoint["run_id"],
        "mode": "evaluate",
        "config_digest": config_digest(checkpoint["config"]),
        "model": config["model"],
        "dataset": config["dataset"],
        "epochs": checkpoint["epoch"] + 1,
        "checkpoint": path,
        "processes": 1 if config["single_spec"] else torch.distributed.get_world_size(),
    }
    for split, data in (("valid", valid_data), ("test", test_data)):
        if split in splits:
            start = time.perf_counter()
            metrics = trainer.evaluate(data, model_file=path, show_progress=config["show_progress"])
            result[f"{split}_seconds"] = time.perf_counter() - start
            result["best_valid_result" if split == "valid" else "test_result"] = _as_floats(metrics)
    if layout:  # every rank done with its collectives before any ends (see _run_single)
        torch.distributed.barrier()
    return result


def run_models(models, dataset, config_files=None, config_dict=None, saved=True):
    """Run each model on the same split (same dataset, filters and seed).

    Args:
        models: model names.
        dataset, config_files, config_dict, saved: as for :func:`run`, the same for every model.

    Returns:
        One result dict per model, in order (see :func:`run`).
    """
    return [run(model, dataset, config_files, config_dict, saved) for model in models]
