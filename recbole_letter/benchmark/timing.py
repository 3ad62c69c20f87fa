"""Helpers the timing scripts in benchmarks/ share: TF32 matmuls on a GPU, replayable batches, a scratch folder."""

import atexit
import os
import shutil
import tempfile

import torch


def use_tf32(device=None):
    """On a GPU (``device``, or any CUDA device when ``None``), float32 matmuls on TF32 tensor cores, as the
    benchmarks train and time; no-op on a CPU."""
    if torch.cuda.is_available() if device is None else torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


class BatchList(list):
    """One pass of a loader's batches, kept to be replayed: what a trainer's epoch loop needs of a training
    loader (iteration, ``len``, ``shuffle``), so that two loops can be timed on the same batches."""

    shuffle = False


def scratch_dir(prefix):
    """A new folder under the system's temporary directory (``$TMPDIR``), made the working directory, since
    RecBole writes ./log, ./log_tensorboard and ./saved where it runs, and removed with all it holds when the
    script exits: a benchmark's models, logs and random LLMs are its own scratch, not the user's files."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.chdir(path)
    return path
