"""Narrow fixes that let RecBole 1.2.1 run on today's numpy / scipy / torch.

Each fix is applied once, at ``import recbole_letter``, and touches only what RecBole itself calls:

* numpy 2 removed ``np.float_`` / ``np.complex_`` / ``np.unicode_``; ``Config.compatibility_settings``
  assigns ``np.float = np.float_`` (and friends) and so raises on every ``Config(...)``. We restore the
  three removed aliases, then run RecBole's own ``compatibility_settings`` once at import: its metrics
  need ``np.float``, and a ``Config`` rebuilt from a checkpoint's values never runs it.
* scipy >= 1.12 dropped ``dok_matrix._update``, which LightGCN / NGCF / NCL call to fill their
  adjacency matrix. We give it back as a plain dict update (what it was).
* ``recbole.model.sequential_recommender.sine`` turns autograd anomaly detection on for the whole
  process at import (about +35 % per training step for every model). We turn it back off.
* ``recbole.quick_start`` imports ray, which needs numpy<2: this package never imports it and builds
  runs from ``Config`` / ``create_dataset`` / ``data_preparation`` / the trainer instead
  (see ``recbole_letter.quick_start``).
* RecBole's exhaustive hyper-parameter search samples with a ``np.random.RandomState``; hyperopt >= 0.3
  (the one that installs with today's setuptools) calls ``rng.integers``, which only a
  ``np.random.Generator`` has. RecBole's ``hyper_tuning`` module gets a numpy whose ``RandomState`` is
  ``default_rng`` (the only use of numpy's RNG there).
* RecBole's own calls that pandas 2.2+ and torch 2.4+ deprecate (``fillna(inplace=True)`` on a column,
  ``Series.agg(len)``, ``torch.cuda.amp.GradScaler``) print five ``FutureWarning`` s in every run; they
  announce breakage in versions the pins exclude (pandas 3), so FutureWarnings raised *from RecBole's
  modules* are not shown (``recbole_letter``'s and everyone else's still are). Likewise the one
  ``UserWarning`` that LightGCN / NGCF / ... raise through ``torch.sparse.FloatTensor`` (a deprecated
  constructor that still works), and only that one.
* torch >= 2.6 loads with ``weights_only=True``; RecBole's trainers pickle their ``Config`` into every
  checkpoint and then cannot read it back. We do not change ``torch.load``: every trainer the quick start
  builds writes checkpoints of tensors and plain values instead (``recbole_letter.trainer.SafeCheckpoints``),
  and ``recbole_letter.trainer.load_checkpoint`` reads them with ``weights_only=True``. RecBole's data
  loading would unpickle too: ``create_dataset`` loads ``dataset_save_path`` (or
  ``<checkpoint_dir>/<dataset>-<Class>.pth``) whenever that file exists, and ``data_preparation`` loads saved
  dataloaders through ``load_split_dataloaders``. ``recbole.data.create_dataset`` (and ``recbole.data.utils``'s)
  becomes :func:`create_dataset`, which always builds the dataset from the atomic files, and
  ``load_split_dataloaders`` finds nothing, so the loaders are always built; ``config_check`` refuses the
  four keys that save or name such files. Nothing is unpickled.
* With ``rm_dup_inter`` set (``properties/overall.yaml``: ``first``, so ml-100k and any dataset without its own
  property file), RecBole sorts the interactions by time with pandas' default ``quicksort`` before dropping
  repeated pairs. That sort is not stable, and numpy runs it with the widest SIMD kernel the CPU has: the order
  of a user's interactions with equal timestamps, and so which of them leave-one-out holds out for valid and
  test, came out differently on AVX-512, AVX2 and older CPUs (ml-100k's test split changed with
  ``NPY_DISABLE_CPU_FEATURES=X86_V3``). ``Dataset._remove_duplication`` sorts stably instead: ties keep the
  file's order on every CPU, as RecBole's later sorts (``np.argsort(kind="stable")``) already do.
"""

import importlib
import types
import warnings

import numpy as np
import scipy.sparse as sp
import torch

_APPLIED = False


def apply():
    """Apply the fixes (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, old):
            setattr(np, old, new)
    from recbole.config import Config

    # RecBole sets np.float etc. (used by its metrics) only inside Config(...); a Config rebuilt from a
    # checkpoint's values never runs it, so set them now, with RecBole's own code.
    Config.compatibility_settings(None)
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, data: self._dict.update(data)
    import recbole.model.sequential_recommender  # noqa: F401  (imports sine.py)

    torch.autograd.set_detect_anomaly(False)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")  # not recbole_letter
    warnings.filterwarnings("ignore", message=r"torch\.sparse\.SparseTensor\(indices, values, shape",
                            category=UserWarning, module=r"recbole\.")
    from recbole.trainer import hyper_tuning

    hyper_tuning.np = _NumpyWithGeneratorRNG()
    import recbole.data
    import recbole.data.dataset
    import recbole.data.utils

    # before anything imports the name (recbole_letter.quick_start: ``from recbole.data import create_dataset``)
    recbole.data.create_dataset = recbole.data.utils.create_dataset = create_dataset
    recbole.data.utils.load_split_dataloaders = _no_saved_dataloaders
    recbole.data.dataset.Dataset._remove_duplication = _remove_duplication
    _APPLIED = True


def create_dataset(config):
    """RecBole's ``create_dataset`` without its saved-file branch (``pickle.load`` of ``dataset_save_path`` or
    ``<checkpoint_dir>/<dataset>-<Class>.pth`` when that file exists): the dataset is always built from the
    atomic files, by the class RecBole would pick (``<Model>Dataset``, else the model type's)."""
    from recbole.utils import ModelType

    dataset_module = importlib.import_module("recbole.data.dataset")
    name = config["model"] + "Dataset"
    if not hasattr(dataset_module, name):
        name = {ModelType.SEQUENTIAL: "SequentialDataset",
                ModelType.KNOWLEDGE: "KnowledgeBasedDataset"}.get(config["MODEL_TYPE"], "Dataset")
    return getattr(dataset_module, name)(config)


def _remove_duplication(self):
    """RecBole's ``Dataset._remove_duplication`` with a stable time sort (see the module docstring): with
    ``rm_dup_inter`` (``first`` / ``last``), the interactions sorted by time, ties in the file's order, then the
    first or last of each repeated (user, item) pair kept."""
    keep = self.config["rm_dup_inter"]
    if keep is None:
        return
    self._check_field("uid_field", "iid_field")
    if self.time_field in self.inter_feat:
        self.inter_feat.sort_values(by=[self.time_field], ascending=True, inplace=True, kind="stable")
    else:
        self.logger.warning(f"Timestamp field has not been loaded or specified, thus strategy [{keep}] of "
                            f"duplication removal may be meaningless.")
    self.inter_feat.drop_duplicates(subset=[self.uid_field, self.iid_field], keep=keep, inplace=True)


def _no_saved_dataloaders(config):
    """``data_preparation`` builds its loaders when this returns None (RecBole's would unpickle a saved file)."""
    return None


class _NumpyWithGeneratorRNG:
    """numpy, except ``random.RandomState(seed)`` gives a ``Generator`` (see the module docstring)."""

    random = types.SimpleNamespace(RandomState=np.random.default_rng)

    def __getattr__(self, name):
        return getattr(np, name)
