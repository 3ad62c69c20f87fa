"""Shared fixtures: every test runs in its own temp cwd (RecBole writes ./log, ./log_tensorboard,
./saved); ``tiny_dataset`` is a 150-user slice of the ml-100k copy that ships inside recbole."""

import os
from pathlib import Path

import pytest
import recbole
import torch

import recbole_letter  # noqa: F401  (compatibility fixes before any recbole use)
from recbole_letter.quick_start import usable_cores

ML100K = Path(recbole.__file__).parent / "dataset_example" / "ml-100k"
TINY_USERS = 150
# torch's threads in a fresh process: what a process a test starts gets (a DDP rank, a command line)
FRESH_PROCESS_THREADS = torch.get_num_threads()
if os.environ.get("PYTEST_XDIST_WORKER"):
    # workers side by side share the cores, as DDP ranks do (quick_start.share_cores): threads of two workers
    # on one core wait for one another at every parallel region
    torch.set_num_threads(max(1, FRESH_PROCESS_THREADS // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pytest.ini): one worker per usable core, at most 4 (each imports torch and recbole, and a DDP
    test starts two more processes); none on one core, nor for tests named one by one (``file.py::test``), where
    starting workers costs more than it saves. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides it."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    if config.args and all("::" in arg for arg in config.args):
        return 0
    cores = usable_cores()
    return min(cores, 4) if cores > 1 else 0


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def keep_torch_threads():
    """A test that sets torch's thread count leaves the process's as it found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_ml100k_slice(folder, name, n_users=TINY_USERS):
    """Copy the interactions of the first ``n_users`` users of ml-100k (and their items' titles)."""
    folder = Path(folder) / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = (ML100K / "ml-100k.inter").read_text().splitlines()
    users = sorted({int(line.split("\t")[0]) for line in lines[1:]})[:n_users]
    keep = set(map(str, users))
    rows = [line for line in lines[1:] if line.split("\t")[0] in keep]
    (folder / f"{name}.inter").write_text("\n".join([lines[0]] + rows) + "\n")
    items = {row.split("\t")[1] for row in rows}
    item_lines = (ML100K / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    item_rows = [line for line in item_lines[1:] if line.split("\t")[0] in items]
    (folder / f"{name}.item").write_text("\n".join([item_lines[0]] + item_rows) + "\n")
    return folder.parent


def tiny_config(data_path):
    """Config overrides that make any model train for one quick epoch on the slice."""
    return {
        "data_path": str(data_path),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "movie_title"]},
        "text_fields": ["movie_title"],
        "epochs": 1,
        "train_batch_size": 512,
        "eval_batch_size": 512,
        "show_progress": False,
        "show_plan": False,  # its probes cost seconds per run; tests/test_plan.py turns it on
        "state": "WARNING",
        "checkpoint_dir": "saved",
    }


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory):
    return write_ml100k_slice(tmp_path_factory.mktemp("data"), "ml-tiny")


@pytest.fixture
def tiny_dataset(tiny_data_path):
    """``(dataset_name, config_dict)`` for the 150-user slice; add your own keys to the dict."""
    return "ml-tiny", tiny_config(tiny_data_path)
