"""Several models, one dataset, one split -> a side-by-side table (markdown, CSV) and JSON.

Runs' results accumulate: each run appends a row (run id, time, config digest, metrics) to
``<results_dir>/<dataset>.jsonl`` under a file lock, and the tables ``<dataset>.md`` / ``.csv`` / ``.json`` are
rewritten from all rows (atomically), so concurrent runs in one folder keep every row.
"""

import datetime
import json
import time
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


def use_tf32(device=None):
    """On a GPU (``device``, or any CUDA device when ``None``), float32 matmuls on TF32 tensor cores, as the
    benchmarks train and time; no-op on a CPU."""
    import torch

    if torch.cuda.is_available() if device is None else torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


class BatchList(list):
    """One pass of a loader's batches, kept to be replayed: what a trainer's epoch loop needs of a training
    loader (iteration, ``len``, ``shuffle``), so that two loops can be timed on the same batches."""

    shuffle = False


def _atomic_write(path, text):
    write_text_atomic(path, text)  # a crash leaves the old file or none, never half a table


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
        with open(rows_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(row) + "\n" for row in new_rows))
        rows = read_rows(rows_path)
        _write_table(results_table(rows), out_dir, name, rows)
    return results_table(new_rows).to_markdown(index=False, floatfmt=".4f")


# ---- paper reproductions: one command each, resumable ----------------------------------------

TABLE1_MODELS = ["MF", "Caser", "HGN", "BERT4Rec", "LightGCN", "SASRec", "TIGER", "LETTER_TIGER"]
LLM_MODELS = ["LC_Rec", "LETTER_LC_Rec"]  # join Table 1 when an llm_path is configured
BEST_TAU = 0.7  # paper Fig. 8: decreasing tau from 1.2 to 0.7 helps
ABLATION_VARIANTS = {  # paper Table 2: label -> (model, overrides)
    "(0) TIGER": ("TIGER", {"tau": 1.0}),
    "(1) TIGER w/ c.r.": ("LETTER_TIGER", {"beta": 0.0, "tau": 1.0}),
    "(2) TIGER w/ d.r.": ("LETTER_TIGER", {"alpha": 0.0, "tau": 1.0}),
    "(3) (1) w/ d.r.": ("LETTER_TIGER", {"tau": 1.0}),
    "(4) LETTER-TIGER": ("LETTER_TIGER", {"tau": BEST_TAU}),
}
SWEEP_VALUES = {  # paper Fig. 8 / Sec. 4.1 search ranges
    "tau": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2],
    "alpha": [0.1, 0.02, 0.01, 0.001],
    "beta": [1e-2, 1e-3, 1e-4, 1e-5],
    "num_levels": [2, 3, 4, 5],
    "codebook_size": [64, 128, 256, 512],
}
# --quick: every stage runs, each for a token amount of work (CI and smoke tests, not results)
QUICK_OVERRIDES = {
    "epochs": 1,
    "stopping_step": 1,
    "hidden_size": 16,
    "inner_size": 32,
    "embedding_size": 16,
    "n_layers": 1,
    "d_model": 32,
    "d_ff": 64,
    "num_heads": 2,
    "d_kv": 16,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "beam_size": 10,
    "cf_epochs": 1,
    "tokenizer_epochs": 2,
    "tokenizer_encoder_layers": [64],
    "codebook_size": 32,
    "div_num_clusters": 4,
    "div_cluster_size_min": 4,
    "div_cluster_size_max": 16,
    "tokenizer_init_samples": 256,
    "show_progress": False,
    "state": "WARNING",
}


def _finished_run(runs_dir, settings, first):
    """The result of a finished run with exactly these settings under ``runs_dir``, whatever its label
    (``first``, the caller's own file, is looked at first), or None."""
    for path in sorted(runs_dir.glob("*.json"), key=lambda path: path != first):
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if stored.get("settings") == settings:
            return stored["result"]
    return None


def run_cached(label, model, dataset, config_files, overrides, runs_dir):
    """``run`` once per settings: a finished run's JSON is reused, so a crashed or stopped benchmark
    resumes where it was, and a run two benchmarks share (Table 2's LETTER-TIGER is the tau sweep's
    tau=0.7) runs once."""
    from recbole_letter.quick_start import run

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / (label.replace(" ", "_").replace("/", "-") + ".json")
    settings = {"model": model, "dataset": dataset, "config_files": config_files or [], "overrides": overrides}
    finished = _finished_run(runs_dir, json.loads(json.dumps(settings)), first=path)
    if finished is not None:
        return finished
    start = time.perf_counter()
    result = run(model, dataset, config_files, dict(overrides))
    result["wall_seconds"] = time.perf_counter() - start
    result["label"] = label
    _atomic_write(path, json.dumps({"settings": settings, "result": result}, indent=2))
    return result


def _with_paper(table, paper_rows, metrics):
    """Add ``paper <metric>`` columns from ``paper_rows[label]`` where the paper has the row."""
    for i, metric in enumerate(metrics):
        table[f"paper {metric}"] = [paper_rows.get(label, (None,) * len(metrics))[i] for label in table["model"]]
    return table


def _write_table(table, out_dir, name, results):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = table.to_markdown(index=False, floatfmt=".4f")
    _atomic_write(out_dir / f"{name}.md", markdown + "\n")
    _atomic_write(out_dir / f"{name}.csv", table.to_csv(index=False))
    _atomic_write(out_dir / f"{name}.json", json.dumps(results, indent=2))
    return markdown


def _test_rows(results, labels):
    rows = []
    for label, result in zip(labels, results):
        row = {"model": label}
        row.update({m: result["test_result"][m] for m in METRIC_ORDER})
        row["wall s"] = round(result.get("wall_seconds", float("nan")), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def table1(dataset, config_files=None, overrides=None, out_dir="results", models=None, quick=False):
    """Paper Table 1: baselines and generative models on one split, ours beside the paper's."""
    from recbole_letter.paper import TABLE1

    overrides = {**(QUICK_OVERRIDES if quick else {}), **(overrides or {})}
    models = models or TABLE1_MODELS + (LLM_MODELS if overrides.get("llm_path") else [])
    runs_dir = Path(out_dir) / "runs" / ("quick" if quick else "full") / dataset
    results = [run_cached(m, m, dataset, config_files, overrides, runs_dir) for m in models]
    table = _with_paper(_test_rows(results, models), TABLE1.get(dataset, {}), METRIC_ORDER)
    return _write_table(table, out_dir, f"table1-{dataset}", results)


def ablation(dataset, config_files=None, overrides=None, out_dir="results", quick=False):
    """Paper Table 2: TIGER; + collaborative reg.; + diversity reg.; both; both + ranking loss."""
    from recbole_letter.paper import TABLE2

    overrides = {**(QUICK_OVERRIDES if quick else {}), **(overrides or {})}
    runs_dir = Path(out_dir) / "runs" / ("quick" if quick else "full") / dataset
    results = [
        run_cached(f"ablation {label}", model, dataset, config_files, {**overrides, **variant}, runs_dir)
        for label, (model, variant) in ABLATION_VARIANTS.items()
    ]
    table = _test_rows(results, list(ABLATION_VARIANTS))
    table = _with_paper(table, TABLE2.get(dataset, {}), ["recall@10", "ndcg@10"])
    return _write_table(table, out_dir, f"ablation-{dataset}", results)


def _trial_name(params):
    return ", ".join(f"{k}={params[k]}" for k in sorted(params))


def _search(label, model, dataset, space, algo, max_evals, config_files, overrides, runs_dir):
    """RecBole's ``HyperTuning`` over ``space`` (its ``params_dict`` layout, or a ``params_file`` path),
    one cached run per trial (a stopped search resumes where it was). -> ``[(params, result)]`` in
    trial order. Needs ``hyperopt`` (in requirements.txt)."""
    from recbole.trainer import HyperTuning

    try:
        import hyperopt  # noqa: F401  (HyperTuning imports it lazily; fail here, with the fix)
    except ImportError as error:
        raise ValueError(f"hyper-parameter search uses RecBole's HyperTuning, which needs hyperopt: "
                         f"pip install hyperopt==0.3.0 ({error})") from error
    trials = []

    def objective(params, _config_files):
        result = run_cached(f"{label} {_trial_name(params)}", model, dataset, config_files,
                            {**overrides, **params}, runs_dir)
        trials.append((dict(params), result))
        return {"model": model, "best_valid_score": result["best_valid_score"], "valid_score_bigger": True,
                "best_valid_result": result["best_valid_result"], "test_result": result["test_result"]}

    source = {"params_file": str(space)} if isinstance(space, (str, Path)) else {"params_dict": space}
    # exhaustive: every point of the grid once (HyperTuning sets max_evals to the grid's size); random /
    # bayes: RecBole's own early stop, 10 trials without a better valid score
    early_stop = 10**9 if algo == "exhaustive" else 10
    HyperTuning(objective, algo=algo, max_evals=max_evals, early_stop=early_stop, **source).run()
    return trials


def sweep(dataset, param, values=None, config_files=None, overrides=None, out_dir="results", quick=False):
    """Paper Fig. 8: LETTER-TIGER's test R@10 / N@10 against one hyper-parameter; table + PNG. The grid
    runs through RecBole's ``HyperTuning`` (exhaustive search)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if param not in SWEEP_VALUES and not values:
        raise ValueError(f"sweep: unknown --param={param!r}; known: {', '.join(SWEEP_VALUES)} (or give --values)")
    values = values or SWEEP_VALUES[param]
    overrides = {**(QUICK_OVERRIDES if quick else {}), **(overrides or {})}
    runs_dir = Path(out_dir) / "runs" / ("quick" if quick else "full") / dataset
    trials = _search("sweep", "LETTER_TIGER", dataset, {"choice": {param: values}}, "exhaustive", len(values),
                     config_files, overrides, runs_dir)
    by_value = {json.dumps(params[param]): result for params, result in trials}
    results = [by_value[json.dumps(v)] for v in values]  # the grid's order, not the search's
    table = _test_rows(results, [f"{param}={v}" for v in values])
    name = f"sweep-{param}-{dataset}"
    markdown = _write_table(table, out_dir, name, results)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, ("recall@10", "ndcg@10")):
        ax.plot([str(v) for v in values], table[metric], marker="o")
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
    fig.suptitle(f"LETTER-TIGER on {dataset}")
    fig.tight_layout()
    fig.savefig(Path(out_dir) / f"{name}.png", dpi=120)
    plt.close(fig)
    return markdown


def tune(dataset, model, params_file, algo="exhaustive", max_evals=100, config_files=None, overrides=None,
         out_dir="results", quick=False):
    """RecBole's hyper-parameter search (``HyperTuning``, its ``params_file`` format: ``name choice [..]``,
    ``uniform a,b``, ...) for any model here, every trial a cached run; one row per trial, best valid
    NDCG@10 first."""
    if not Path(params_file).is_file():
        raise FileNotFoundError(f"--params_file {params_file} not found (RecBole's format: lines such as "
                                f"'tau choice [0.7,1.0]')")
    overrides = {**(QUICK_OVERRIDES if quick else {}), **(overrides or {})}
    runs_dir = Path(out_dir) / "runs" / ("quick" if quick else "full") / dataset
    trials = _search(f"tune {model}", model, dataset, params_file, algo, max_evals, config_files, overrides, runs_dir)
    results = [result for _, result in trials]
    table = _test_rows(results, [_trial_name(params) for params, _ in trials]).rename(columns={"model": "trial"})
    table.insert(1, "valid ndcg@10", [result["best_valid_result"].get("ndcg@10") for result in results])
    table = table.sort_values("valid ndcg@10", ascending=False, kind="stable")
    return _write_table(table, out_dir, f"tune-{model}-{dataset}", results)


CODES_VARIANTS = {  # paper Fig. 6 / Tables 3-4: label -> (model whose tokenizer settings apply, overrides)
    "TIGER": ("TIGER", {}),
    "TIGER w/ d.r.": ("LETTER_TIGER", {"alpha": 0.0}),
    "TIGER w/ c.r.": ("LETTER_TIGER", {"beta": 0.0}),
    "LETTER": ("LETTER_TIGER", {}),
}


def codes(dataset, config_files=None, overrides=None, out_dir="results", quick=False):
    """Paper Fig. 6 (level-1 code assignment, groups of 15 codes) and Tables 3-4 from tokenizer reports.

    Each variant trains (or reuses from the tokenizer cache) its tokenizer via ``--tokenize_only``; the
    rows of the table are the report's quality figures, with the paper's Table 3/4 values beside them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from recbole_letter.paper import TABLE3, TABLE4

    overrides = {**(QUICK_OVERRIDES if quick else {}), **(overrides or {}), "tokenize_only": True}
    runs_dir = Path(out_dir) / "runs" / ("quick" if quick else "full") / dataset
    reports, rows = {}, []
    for label, (model, variant) in CODES_VARIANTS.items():
        report = run_cached(f"codes {label}", model, dataset, config_files, {**overrides, **variant}, runs_dir)
        report = report["tokenizer_report"]
        reports[label] = report
        ranking = (report.get("zhat_ranking") or {}).get("z_hat") or {}
        rows.append({
            "tokenizer": label,
            "collision before": report["collision_rate_before"],
            "collision final": report["collision_rate_after"],
            "L1 codes used": report["codes_used_per_level"][0],
            "L1 entropy (bits)": report["entropy_per_level"][0],
            "CF-neighbour overlap": report["cf_neighbour_code_overlap"],
            "paper overlap": TABLE4.get(dataset, {}).get(label),
            "z_hat R@10": ranking.get("recall@10"),
            "paper z_hat R@10": TABLE3.get(dataset, {}).get(label, (None,) * 4)[1],
            "z_hat N@10": ranking.get("ndcg@10"),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    name = f"codes-{dataset}"
    markdown = _write_table(table, out_dir, name, reports)
    out = Path(out_dir)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for ax, pair in zip(axes, (("TIGER", "TIGER w/ d.r."), ("TIGER w/ c.r.", "LETTER"))):
        for offset, label in zip((-0.2, 0.2), pair):
            counts = reports[label]["level1_group_counts"]
            ax.bar([i + offset for i in range(len(counts))], counts, width=0.4, label=label)
        ax.set_xlabel("level-1 codes sorted by frequency, groups of 15")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    axes[0].set_ylabel("items")
    fig.suptitle(f"Level-1 code assignment on {dataset} (paper Fig. 6)")
    fig.tight_layout()
    fig.savefig(out / f"{name}-fig6.png", dpi=120)
    plt.close(fig)
    return markdown
