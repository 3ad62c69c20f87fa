"""Several models, one dataset, one split -> a side-by-side table (markdown, CSV) and JSON."""

import json
import os
from pathlib import Path

import pandas as pd

METRIC_ORDER = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]


def results_table(results):
    """One row per model: valid and test Recall/NDCG@5,10, epochs and wall time."""
    rows = []
    for result in results:
        row = {"model": result["model"]}
        for split, key in (("valid", "best_valid_result"), ("test", "test_result")):
            for metric in METRIC_ORDER:
                row[f"{split} {metric}"] = result[key].get(metric)
        row["epochs"] = result.get("epochs")
        row["s/epoch"] = round(result.get("seconds_per_epoch", float("nan")), 2)
        rows.append(row)
    return pd.DataFrame(rows)


def _atomic_write(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_results(results, out_dir, name):
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.json`` under ``out_dir``; returns the markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = results_table(results)
    markdown = table.to_markdown(index=False, floatfmt=".4f")
    _atomic_write(out_dir / f"{name}.md", markdown + "\n")
    _atomic_write(out_dir / f"{name}.csv", table.to_csv(index=False))
    _atomic_write(out_dir / f"{name}.json", json.dumps(results, indent=2))
    return markdown
