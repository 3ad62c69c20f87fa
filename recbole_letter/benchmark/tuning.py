"""Hyper-parameter search through RecBole's ``HyperTuning``: the paper's Fig. 8 sweeps and ``tune`` for any
model, every trial a cached run (``runners.run_cached``), so a stopped search resumes where it was."""

import ast
import json
import numbers
from pathlib import Path

from recbole.trainer import HyperTuning

from recbole_letter.benchmark.results import test_rows, write_table
from recbole_letter.benchmark.runners import QUICK_OVERRIDES, run_cached
from recbole_letter.files import write_atomic

SWEEP_VALUES = {  # paper Fig. 8 / Sec. 4.1 search ranges
    "tau": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2],
    "alpha": [0.1, 0.02, 0.01, 0.001],
    "beta": [1e-2, 1e-3, 1e-4, 1e-5],
    "num_levels": [2, 3, 4, 5],
    "codebook_size": [64, 128, 256, 512],
}


SPACE_ARITY = {"uniform": 2, "quniform": 3, "loguniform": 2}  # numbers after the name: low,high[,q]


def read_params_file(path):
    """RecBole's hyper-parameter file as its ``params_dict`` layout, read with ``ast.literal_eval`` (RecBole's
    own ``_build_space_from_file`` ``eval``s every ``choice`` value). Lines: ``tau choice [0.7,1.0]``,
    ``learning_rate loguniform -8,0``, ``x uniform a,b``, ``x quniform a,b,q``; blank lines and ``#``
    comments are skipped. A bad line is one ``ValueError`` naming ``file:line``."""
    space = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        parts = line.split()
        if len(parts) < 3:
            raise ValueError(f"{where}: expected 'name type values' (e.g. 'tau choice [0.7,1.0]'), got {line.strip()!r}")
        name, kind, text = parts[0], parts[1], "".join(parts[2:])
        if kind != "choice" and kind not in SPACE_ARITY:
            raise ValueError(f"{where}: unknown type {kind!r}; expected choice, uniform, quniform or loguniform")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError(f"{where}: {name} {kind}: {text!r} is not a literal (a list such as [0.7,1.0], "
                             f"or numbers such as -8,0); nothing here is evaluated") from None
        if kind == "choice":
            if not isinstance(value, list) or not value:
                raise ValueError(f"{where}: {name} choice: expected a non-empty list such as [0.7,1.0], got {text!r}")
        else:
            arity = SPACE_ARITY[kind]
            values = value if isinstance(value, tuple) else (value,)
            if len(values) != arity or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                               for v in values):
                shape = "low,high,q" if arity == 3 else "low,high"
                raise ValueError(f"{where}: {name} {kind}: expected {arity} numbers {shape}, got {text!r}")
            value = [float(v) for v in values]
        if any(name in names for names in space.values()):
            raise ValueError(f"{where}: {name} is given twice")
        space.setdefault(kind, {})[name] = value
    if not space:
        raise ValueError(f"{path}: no parameters (lines such as 'tau choice [0.7,1.0]')")
    return space


def _trial_name(params):
    return ", ".join(f"{k}={params[k]}" for k in sorted(params))


def _search(label, model, dataset, space, algo, max_evals, config_files, overrides, runs_dir):
    """RecBole's ``HyperTuning`` over ``space`` (its ``params_dict`` layout, or a ``params_file`` path read
    by :func:`read_params_file`, never by RecBole, which ``eval``s it),
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

    if isinstance(space, (str, Path)):
        space = read_params_file(space)
    # exhaustive: every point of the grid once (HyperTuning sets max_evals to the grid's size); random /
    # bayes: RecBole's own early stop, 10 trials without a better valid score
    early_stop = 10**9 if algo == "exhaustive" else 10
    HyperTuning(objective, algo=algo, max_evals=max_evals, early_stop=early_stop, params_dict=space).run()
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
    write_atomic(Path(out_dir) / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=120))  # never half a figure
    plt.close(fig)
    return markdown


def tune(dataset, model, params_file, algo="exhaustive", max_evals=100, config_files=None, overrides=None,
         out_dir="results", quick=False):
    """RecBole's hyper-parameter search (``HyperTuning``, its ``params_file`` format: ``name choice [..]``,
    ``uniform a,b``, ...; read as literals by :func:`read_params_file`) for any model here, every trial a cached run; one row per trial, best valid
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
