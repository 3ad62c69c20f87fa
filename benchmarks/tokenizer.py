"""The LETTER tokenizer stage: shipped defaults vs paper-size settings (a script, not a test).

    python benchmarks/tokenizer.py --dataset=Beauty --data_path=../shared/data --threads=2

Runs the whole tokenizer stage (text embeddings, CF table, RQ-VAE, collision resolution) with
(1) the shipped defaults (properties/tokenizer.yaml) and (2) the paper-size settings
(``--paper_config``, default properties/profile/paper/tokenizer.yaml), and prints one comparison table: wall
seconds per stage, collisions before resolution / after Sinkhorn re-coding / final, codes used and
entropy per level, CF-neighbour code overlap, the CF model's held-out figure. Every stage is cached
under ``--checkpoint_dir``; a cached stage prints the wall time measured when it was computed (with the
load average of that moment). The text embeddings are computed once and shared (keyed by the text keys).

Options: ``--only=defaults|paper`` (one side), ``--plain`` (adds the plain RQ-VAE, alpha = beta = 0,
with the defaults), ``--released_codes=<*.index.json>`` (adds the released codes as a reference row),
``--timing_epochs=N`` (per-epoch cost split of the tokenizer: forward/backward vs clustering vs
Sinkhorn). Extra ``--key=value`` arguments override config keys of both sides (e.g. ``--cf_epochs=5``).

On the 2-core machine the defaults take ~4 minutes, the paper-size side ~45 (docs/tokenizer.md).
No generator R@10 here: a CPU-sized T5 on Beauty is tens of minutes per setting (docs/results.md), not cheap.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import recbole_letter  # noqa: E402,F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Beauty")
    parser.add_argument("--data_path", default="../shared/data")
    parser.add_argument("--checkpoint_dir", default="saved/benchmark_tokenizer")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 avoids thrashing on a loaded CPU)")
    parser.add_argument("--paper_config", default=os.path.join(REPO, "properties", "profile", "paper", "tokenizer.yaml"))
    parser.add_argument("--only", choices=("defaults", "paper"), default=None)
    parser.add_argument("--plain", action="store_true", help="also the plain RQ-VAE (alpha = beta = 0), defaults")
    parser.add_argument("--timing_epochs", type=int, default=0, help="epochs of the per-epoch cost split (0 = skip)")
    parser.add_argument("--released_codes", default=None, help="*.index.json to report as the reference")
    args, rest = parser.parse_known_args()
    torch.set_num_threads(args.threads)

    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_letter.quick_start import PROPERTIES_DIR, build_config
    from recbole_letter.tokenizer import trainer
    from recbole_letter.tokenizer.report import tokenizer_report
    from recbole_letter.tokenizer.trainer import report_for_index_json

    overrides = {"data_path": args.data_path, "checkpoint_dir": args.checkpoint_dir, "show_progress": True,
                 "state": "WARNING"}  # fmt: skip
    for item in rest:
        key, _, value = item.lstrip("-").partition("=")
        overrides[key] = value
    base = [str(PROPERTIES_DIR / "tokenizer.yaml")]
    settings = []
    if args.only in (None, "defaults"):
        settings.append(("defaults", build_config("SASRec", args.dataset, base, overrides)))
        if args.plain:
            settings.append(("plain RQ-VAE (defaults, alpha=beta=0)",
                             build_config("SASRec", args.dataset, base, dict(overrides, alpha=0.0, beta=0.0))))  # fmt: skip
    if args.only in (None, "paper"):
        settings.append(("paper-size", build_config("SASRec", args.dataset, base + [args.paper_config], overrides)))
    config = settings[0][1]
    init_seed(config["seed"], True)
    start = time.perf_counter()
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    dataset = train_data.dataset
    print(f"data: {dataset.item_num - 1} items, {len(dataset)} training rows ({time.perf_counter() - start:.1f} s); "
          f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load {_load()}")  # fmt: skip

    keys = trainer.cache_keys(config, dataset)
    semantic_emb, seconds = trainer.load_or_compute_semantic_emb(config, dataset, keys["semantic"])
    print(f"(a) text embeddings {semantic_emb.shape}: {seconds:.1f} s" + (" (cached)" if seconds == 0 else ""))
    identical = 1.0 - len(np.unique(semantic_emb[1:], axis=0)) / (len(semantic_emb) - 1)
    print(f"    collision floor: {identical:.4%} of the items share their text embedding with another item")

    if args.timing_epochs:
        _timing_split(trainer, config, dataset, semantic_emb, args.timing_epochs)

    rows = {}
    for name, run_config in settings:
        print(f"\n== {name}: load {_load()}")
        keys = trainer.cache_keys(run_config, dataset)
        start = time.perf_counter()
        _, art = trainer.load_or_train_item_codes(run_config, dataset, return_artifacts=True)
        wall = time.perf_counter() - start
        report = tokenizer_report(dataset, art["before"], art["resolved"], art["final"], cf_emb=art["cf_emb"],
                                  z_hat=art["z_hat"], cf_model=art["cf_model"], eval_data=valid_data,
                                  out_dir=art["run_dir"], title=f"{name} on {args.dataset}", quiet=True,
                                  extra={"history": art["history"], "timings": art["timings"]})  # fmt: skip
        rows[name] = _row(trainer, run_config, keys, art, report, wall)
        print(json.dumps(rows[name]))

    if args.released_codes and os.path.isfile(args.released_codes):
        r = report_for_index_json(config, dataset, args.released_codes, eval_data=valid_data)
        rows["released codes"] = {"collision_before": r["collision_rate_before"],
                                  "collision_after_sinkhorn": r["collision_rate_after_sinkhorn"],
                                  "collision_after": r["collision_rate_after"], "codes_used": r["codes_used_per_level"],
                                  "entropy": r["entropy_per_level"], "cf_overlap": r["cf_neighbour_code_overlap"]}  # fmt: skip
    _print_table(rows)


def _load():
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _row(trainer, config, keys, art, report, wall):
    """One row of the comparison; stage seconds measured now, or (cached) when the stage was computed."""
    root, run_dir = trainer.cache_root(config), art["run_dir"]
    timings, cached = dict(art["timings"]), []
    cf_json = os.path.join(root, f"cf_{keys['cf']}.json")
    cf_history = json.load(open(cf_json)) if os.path.isfile(cf_json) else {}
    if not timings.get("seconds_cf_table") and cf_history:
        timings["seconds_cf_table"], _ = cf_history.get("seconds"), cached.append("cf")
    stored = os.path.join(run_dir, "timings.json")
    if os.path.isfile(stored):
        before = json.load(open(stored))
        for key in ("seconds_tokenizer", "seconds_resolve"):
            if not timings.get(key) and before.get(key):
                timings[key], _ = before[key], cached.append(key.split("_")[1])
    history = art["history"] or {}
    stages = [timings.get(k) or 0.0 for k in ("seconds_cf_table", "seconds_tokenizer", "seconds_resolve")]
    return {
        "cf_s": stages[0], "tokenizer_s": stages[1], "resolve_s": stages[2], "stage_s": sum(stages),
        "cached": cached, "wall_now_s": wall, "load_now": _load(),
        "cf_epochs_run": len(cf_history.get("epoch", [])) or None, "cf_best_epoch": cf_history.get("best_epoch"),
        "cf_best_valid": cf_history.get("best_valid"), "tokenizer_epochs_run": history.get("epochs_run"),
        "collision_before": report["collision_rate_before"], "collision_after_sinkhorn": report["collision_rate_after_sinkhorn"],
        "collision_after": report["collision_rate_after"], "codes_used": report["codes_used_per_level"],
        "entropy": [round(e, 2) for e in report["entropy_per_level"]], "cf_overlap": report["cf_neighbour_code_overlap"],
        "zhat_r10": ((report.get("zhat_ranking") or {}).get("z_hat") or {}).get("recall@10"),
        "sasrec_r10": ((report.get("zhat_ranking") or {}).get("sasrec_items") or {}).get("recall@10"),
    }  # fmt: skip


def _print_table(rows):
    def sec(r, k):
        return "-" if k not in r else f"{r[k]:.0f}"

    print("\n| setting | CF table s (epochs, best) | RQ-VAE s (epochs) | resolution s | stage s | collision before | "
          "after Sinkhorn | final | codes used per level | entropy per level (bits) | CF-neighbour overlap | "
          "SASRec valid R@10 | z_hat valid R@10 |")  # fmt: skip
    print("|---" * 13 + "|")
    for name, r in rows.items():
        cf = f"{sec(r, 'cf_s')} ({r.get('cf_epochs_run')}, {r.get('cf_best_epoch')})" if "cf_s" in r else "-"
        tok = f"{sec(r, 'tokenizer_s')} ({r.get('tokenizer_epochs_run')})" if "tokenizer_s" in r else "-"

        def fmt(value, spec):
            return "n/a" if value is None else format(value, spec)

        print(f"| {name} | {cf} | {tok} | {sec(r, 'resolve_s')} | {sec(r, 'stage_s')} | {r['collision_before']:.3%} | "
              f"{r['collision_after_sinkhorn']:.3%} | {r['collision_after']:.3%} | {r['codes_used']} | {r['entropy']} | "
              f"{r['cf_overlap']:.4f} | {fmt(r.get('sasrec_r10'), '.4f')} | {fmt(r.get('zhat_r10'), '.4f')} |")  # fmt: skip
    if "defaults" in rows and "paper-size" in rows:
        d, p = rows["defaults"], rows["paper-size"]
        print(f"\nstage time, paper-size / defaults: {p['stage_s'] / max(d['stage_s'], 1e-9):.1f}x "
              f"(CF {p['cf_s'] / max(d['cf_s'], 1e-9):.1f}x, RQ-VAE {p['tokenizer_s'] / max(d['tokenizer_s'], 1e-9):.1f}x)")  # fmt: skip
    for name, r in rows.items():
        if r.get("cached"):
            print(f"{name}: cached stages {r['cached']} report the seconds measured when they were computed")


def _timing_split(trainer, config, dataset, semantic_emb, epochs):
    """Per-epoch cost: forward/backward vs diversity clustering vs Sinkhorn (release interval 1 vs configured)."""
    cf_emb, _, _ = trainer.load_or_train_cf(config, dataset, trainer.cache_keys(config, dataset)["cf"])
    for interval in sorted({1, int(config["div_cluster_interval"])}):
        timing = _copy(config, tokenizer_epochs=epochs, div_cluster_interval=interval, tokenizer_eval_interval=10**9)
        start = time.perf_counter()
        _, history = trainer.train_tokenizer(timing, semantic_emb, cf_emb, show_progress=False)
        total, n = time.perf_counter() - start, history["epochs_run"]
        print(f"(c) per epoch, div_cluster_interval={interval}: forward/backward {history['seconds_forward_backward'] / n:.3f} s"
              f", clustering {history['seconds_clustering'] / n:.3f} s, Sinkhorn {history['seconds_sinkhorn'] / n:.3f} s"
              f" (total {total / n:.3f} s incl. init)")  # fmt: skip


def _copy(config, **overrides):
    import copy

    new = copy.deepcopy(config)
    for key, value in overrides.items():
        new[key] = value
    return new


if __name__ == "__main__":
    main()
