"""The paper's tables and figures, one command each (``run_recbole_letter.py --benchmark=...``), resumable:
every run's result is kept under ``<out_dir>/runs/`` and reused by any later command with the same settings.
"""

import json
import time
from pathlib import Path

import pandas as pd

from recbole_letter import quick_start
from recbole_letter.benchmark.results import METRIC_ORDER, test_rows, with_paper, write_table
from recbole_letter.files import write_text_atomic
from recbole_letter.paper import TABLE1, TABLE2, TABLE3, TABLE4

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
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / (label.replace(" ", "_").replace("/", "-") + ".json")
    settings = {"model": model, "dataset": dataset, "config_files": config_files or [], "overrides": overrides}
    finished = _finished_run(runs_dir, json.loads(json.dumps(settings)), first=path)
    if finished is not None:
        return finished
    start = time.perf_counter()
    result = quick_start.run(model, dataset, config_files, dict(overrides))
    result["wall_seconds"] = time.perf_counter() - start
    result["label"] = label
    write_text_atomic(path, json.dumps({"settings": settings, "result": result}, indent=2))
    return result


def table1(dataset, config_files=None, overrides=None, out_dir="results", models=None, quick=False):
    """Paper Table 1: baselines and generative models on one split, ours beside the paper's."""
    overrides = {**(QUICK_OVERRIDES if quick else {}), **(overrides or {})}
    models = models or TABLE1_MODELS + (LLM_MODELS if overrides.get("llm_path") else [])
    runs_dir = Path(out_dir) / "runs" / ("quick" if quick else "full") / dataset
    results = [run_cached(m, m, dataset, config_files, overrides, runs_dir) for m in models]
    table = with_paper(test_rows(results, models), TABLE1.get(dataset, {}), METRIC_ORDER)
    return write_table(table, out_dir, f"table1-{dataset}", results)


def ablation(dataset, config_files=None, overrides=None, out_dir="results", quick=False):
    """Paper Table 2: TIGER; + collaborative reg.; + diversity reg.; both; both + ranking loss."""
    overrides = {**(QUICK_OVERRIDES if quick else {}), **(overrides or {})}
    runs_dir = Path(out_dir) / "runs" / ("quick" if quick else "full") / dataset
    results = [
        run_cached(f"ablation {label}", model, dataset, config_files, {**overrides, **variant}, runs_dir)
        for label, (model, variant) in ABLATION_VARIANTS.items()
    ]
    table = test_rows(results, list(ABLATION_VARIANTS))
    table = with_paper(table, TABLE2.get(dataset, {}), ["recall@10", "ndcg@10"])
    return write_table(table, out_dir, f"ablation-{dataset}", results)


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
    markdown = write_table(table, out_dir, name, reports)
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
