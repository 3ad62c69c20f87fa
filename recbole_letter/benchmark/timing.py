"""Helpers the timing scripts in benchmarks/ share: TF32 matmuls on a GPU, replayable batches."""

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
