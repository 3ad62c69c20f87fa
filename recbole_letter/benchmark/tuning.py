"""Hyper-parameter search through RecBole's ``HyperTuning``: the paper's Fig. 8 sweeps and ``tune`` for any
model, every trial a cached run (``runners.run_cached``), so a stopped search resumes where it was."""

import json
from pathlib import Path

from recbole.trainer import HyperTuning

from recbole_letter.benchmark.results import test_rows, write_table
from recbole_letter.benchmark.runners import QUICK_OVERRIDES, run_cached

SWEEP_VALUES = {  # paper Fig. 8 / Sec. 4.1 search ranges
    "tau": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2],
    "alpha": [0.1, 0.02, 0.01, 0.001],
    "beta": [1e-2, 1e-3, 1e-4, 1e-5],
    "num_levels": [2, 3, 4, 5],
    "codebook_size": [64, 128, 256, 512],
}


def _trial_name(params):
    return ", ".join(f"{k}={params[k]}" for k in sorted(params))


def _search(label, model, dataset, space, algo, max_evals, config_files, overrides, runs_dir):
    """RecBole's ``HyperTuning`` over ``space`` (its ``params_dict`` layout, or a ``params_file`` path),
    one cached run per trial (a stopped search resumes where it was). -> ``[(params, result)]`` in
    trial order. Needs ``hyperopt`` (in requirements.txt)."""
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
    table = test_rows(results, [f"{param}={v}" for v in values])
    name = f"sweep-{param}-{dataset}"
    markdown = write_table(table, out_dir, name, results)
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
    table = test_rows(results, [_trial_name(params) for params, _ in trials]).rename(columns={"model": "trial"})
    table.insert(1, "valid ndcg@10", [result["best_valid_result"].get("ndcg@10") for result in results])
    table = table.sort_values("valid ndcg@10", ascending=False, kind="stable")
    return write_table(table, out_dir, f"tune-{model}-{dataset}", results)
