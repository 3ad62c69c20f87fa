"""Result rows and tables: one row per run, accumulated in ``<results_dir>/<dataset>.jsonl``.

Each run appends a row (run id, time, config digest, metrics) under a file lock, and the tables
``<dataset>.md`` / ``.csv`` / ``.json`` are rewritten from all rows (atomically), so concurrent runs in one
folder keep every row.
"""

import datetime
import json
import os
import warnings
from pathlib import Path

import pandas as pd

from recbole_letter.files import locked, write_text_atomic

METRIC_ORDER = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]


def results_table(results):
    """One row per run: model, valid and test Recall/NDCG@5,10, epochs, wall time and run id (and, for rows of
    a results file, when the row was written, whether the run trained or evaluated a checkpoint, and its
    config digest)."""
    rows = []
    for result in results:
        row = {"model": result["model"]}
        for split, key in (("valid", "best_valid_result"), ("test", "test_result")):
            for metric in METRIC_ORDER:
                row[f"{split} {metric}"] = result[key].get(metric)
        row["epochs"] = result.get("epochs")
        seconds = result.get("seconds_per_epoch")
        row["s/epoch"] = round(seconds, 2) if seconds is not None else None
        row["run id"] = result.get("run_id")
        if "time" in result:
            row.update({"time": result["time"], "mode": result.get("mode"), "config digest": result.get("config_digest")})
        rows.append(row)
    return pd.DataFrame(rows)


ROW_KEYS = ("run_id", "time", "mode", "model", "dataset", "config_digest", "checkpoint", "epochs",
            "seconds_per_epoch", "best_valid_result", "test_result")


def result_row(result, when=None):
    """The row a results file keeps for one run's result dict (``quick_start.run`` / ``evaluate_checkpoint``):
    ``ROW_KEYS``, ``time`` being ``when`` (default: now, ISO 8601 to the second)."""
    if not result.get("run_id"):
        raise ValueError(f"a result of {result.get('model')} without a run_id cannot become a results row")
    when = when or datetime.datetime.now().isoformat(timespec="seconds")
    return {key: (when if key == "time" else result.get(key)) for key in ROW_KEYS}


def read_rows(path):
    """The rows of a ``.jsonl`` results file, in the order they were written. A line that is not JSON (a
    writer killed mid-line) is skipped with a warning naming it."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: not a JSON row (a writer stopped mid-line?); left out of the tables")
    return rows


def write_results(results, out_dir, name):
    """Append one row per result to ``<out_dir>/<name>.jsonl`` and rewrite ``<name>.md``, ``<name>.csv`` and
    ``<name>.json`` from every row the file holds, all under one lock (``<name>.jsonl.lock``): concurrent
    runs keep each other's rows, and the tables always match the rows file.

    Returns:
        str: the markdown table of ``results`` alone (the files hold every run's).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / f"{name}.jsonl"
    new_rows = [result_row(result) for result in results]
    with locked(rows_path):
        # a writer killed mid-line left no newline: start on a line of our own, or our first row would join
        # the torn one and be skipped with it
        torn = rows_path.is_file() and rows_path.stat().st_size > 0 and _last_byte(rows_path) != b"\n"
        with open(rows_path, "a", encoding="utf-8") as f:
            f.write(("\n" if torn else "") + "".join(json.dumps(row) + "\n" for row in new_rows))
        rows = read_rows(rows_path)
        write_table(results_table(rows), out_dir, name, rows)
    return results_table(new_rows).to_markdown(index=False, floatfmt=".4f")


def _last_byte(path):
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def write_table(table, out_dir, name, results):
    """``table`` as ``<out_dir>/<name>.md`` and ``.csv``, ``results`` as ``<name>.json`` (each written atomically:
    a crash leaves the old file or none, never half a table); returns the markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = table.to_markdown(index=False, floatfmt=".4f")
    write_text_atomic(out_dir / f"{name}.md", markdown + "\n")
    write_text_atomic(out_dir / f"{name}.csv", table.to_csv(index=False))
    write_text_atomic(out_dir / f"{name}.json", json.dumps(results, indent=2))
    return markdown


def test_rows(results, labels):
    """One row per result: its label, test Recall/NDCG@5,10 and wall seconds."""
    rows = []
    for label, result in zip(labels, results):
        row = {"model": label}
        row.update({m: result["test_result"][m] for m in METRIC_ORDER})
        row["wall s"] = round(result.get("wall_seconds", float("nan")), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def with_paper(table, paper_rows, metrics):
    """Add ``paper <metric>`` columns from ``paper_rows[label]`` where the paper has the row."""
    for i, metric in enumerate(metrics):
        table[f"paper {metric}"] = [paper_rows.get(label, (None,) * len(metrics))[i] for label in table["model"]]
    return table
