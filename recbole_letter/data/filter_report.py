"""What RecBole's filters did to a dataset: counts read, removed per filter, kept; a warning above 1 %.

RecBole's ``Dataset._data_filtering`` runs five steps on the loaded interactions (rows without a user or
item id, ``rm_dup_inter``, ``val_interval``, ``filter_inter_by_user_or_item``, the
``user/item_inter_num_interval`` k-core) and says nothing about what they removed. While
:func:`recording_filters` is active, each step is wrapped to count users, items and interactions before
and after it (the steps themselves run unchanged); :func:`log_filter_report` writes one line per step and
a warning when the filters removed more than ``WARN_FRACTION`` of the interactions.

    with recording_filters() as steps:
        dataset = create_dataset(config)
    log_filter_report(config, dataset, steps)
"""

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from logging import getLogger

import numpy as np
import pandas as pd
from recbole.data.dataset import Dataset

WARN_FRACTION = 0.01  # removing more than this share of the interactions is a warning


@dataclass(frozen=True)
class Counts:
    users: int
    items: int
    interactions: int

    def __str__(self):
        return f"{self.users:,} users, {self.items:,} items, {self.interactions:,} interactions"


def _describe(config, step):
    """The config keys behind one step, as the user would write them (``~`` = off)."""
    value = lambda key: "~" if config[key] is None else config[key]  # noqa: E731
    return {
        "_filter_nan_user_or_item": "rows without a user or item id",
        "_remove_duplication": f"rm_dup_inter={value('rm_dup_inter')}",
        "_filter_by_field_value": f"val_interval={value('val_interval')}",
        "_filter_inter_by_user_or_item": f"filter_inter_by_user_or_item={value('filter_inter_by_user_or_item')}",
        "_filter_by_inter_num": f"user_inter_num_interval={value('user_inter_num_interval')}, "
                                f"item_inter_num_interval={value('item_inter_num_interval')}",
    }[step]  # fmt: skip


STEPS = ("_filter_nan_user_or_item", "_remove_duplication", "_filter_by_field_value",
         "_filter_inter_by_user_or_item", "_filter_by_inter_num")  # fmt: skip


def _counts(dataset):
    """Distinct users, distinct items and rows of ``dataset.inter_feat`` (a DataFrame, or an Interaction)."""
    inter = dataset.inter_feat
    n_distinct = lambda field: len(pd.unique(np.asarray(inter[field]).ravel()))  # noqa: E731  (NaN counts once)
    return Counts(n_distinct(dataset.uid_field), n_distinct(dataset.iid_field), len(inter))


@contextmanager
def recording_filters():
    """Inside the block, every RecBole ``Dataset`` filter step appends ``(step, before, after)`` (``Counts``)
    to the yielded list. The wrappers are removed on leaving the block."""
    steps = []
    originals = {name: Dataset.__dict__[name] for name in STEPS}

    def recorded(name, original):
        @functools.wraps(original)
        def step(self, *args, **kwargs):
            before = _counts(self)
            result = original(self, *args, **kwargs)
            steps.append((name, before, _counts(self)))
            return result

        return step

    for name, original in originals.items():
        setattr(Dataset, name, recorded(name, original))
    try:
        yield steps
    finally:
        for name, original in originals.items():
            setattr(Dataset, name, original)


def _percent(part, whole):
    return 100.0 * part / whole if whole else 0.0


def filter_report(config, dataset, steps):
    """``{"read", "steps", "kept", "removed_fraction", "catalogue_items"}`` (JSON-ready) from the recorded steps."""
    kept = _counts(dataset)
    read = steps[0][1] if steps else None
    return {
        "read": None if read is None else vars(read),
        "steps": [{"filter": _describe(config, name), "before": vars(before), "after": vars(after)}
                  for name, before, after in steps],  # fmt: skip
        "kept": vars(kept),
        "removed_fraction": None if read is None else 1.0 - kept.interactions / max(read.interactions, 1),
        "catalogue_items": int(dataset.item_num - 1),  # without RecBole's padding id 0
    }


def log_filter_report(config, dataset, steps, logger=None):
    """Log what the filters did (one line per filter) and warn above ``WARN_FRACTION``; returns
    :func:`filter_report`'s dict."""
    logger = logger or getLogger()
    report = filter_report(config, dataset, steps)
    name, kept = config["dataset"], Counts(**report["kept"])
    if not steps:  # RecBole loaded a saved dataset (dataset_save_path), or benchmark_filename skips filtering
        logger.info(f"data {name}: no filter ran (a saved dataset, or benchmark_filename); kept {kept}")
        return report
    read = Counts(**report["read"])
    logger.info(f"data {name}: read {read} from {name}.inter")
    for step, before, after in steps:
        removed = before.interactions - after.interactions
        logger.info(
            f"data filter {_describe(config, step)}: removed {removed:,} interactions "
            f"({_percent(removed, read.interactions):.2f} %), {before.users - after.users:,} users, "
            f"{before.items - after.items:,} items"
        )
    removed = read.interactions - kept.interactions
    logger.info(f"data {name}: kept {kept} ({removed:,} interactions = {_percent(removed, read.interactions):.2f} % "
                f"removed by the filters)")  # fmt: skip
    if report["removed_fraction"] > WARN_FRACTION:
        culprits = "; ".join(s["filter"] for s in report["steps"]
                             if s["before"]["interactions"] > s["after"]["interactions"])
        logger.warning(
            f"data {name}: the filters removed {_percent(removed, read.interactions):.2f} % of the interactions "
            f"(more than {100 * WARN_FRACTION:g} %) by {culprits}. If the files are filtered already (the paper's "
            f"datasets are), turn these off: rm_dup_inter: ~, user_inter_num_interval: ~, item_inter_num_interval: ~"
        )
    without = report["catalogue_items"] - kept.items
    if without > 0:
        logger.warning(
            f"data {name}: {without:,} items of the catalogue ({report['catalogue_items']:,}) have no interaction "
            f"(they come from {name}.item only); they are ranked but never a target"
        )
    return report
