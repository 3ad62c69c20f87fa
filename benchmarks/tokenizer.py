"""Where the LETTER tokenizer's time goes, and what it produces (a script, not a test).

    python benchmarks/tokenizer.py --dataset=Beauty --data_path=../shared/data

Prints wall times of (a) text embeddings, (b) the CF table (SASRec on the training split), (c) the
tokenizer, with the per-epoch split forward/backward vs diversity clustering vs Sinkhorn for
``div_cluster_interval`` 1 (release) and the faster interval, then the quality reports of LETTER,
the plain RQ-VAE (alpha = beta = 0, TIGER's tokenizer) and, when present, the released codes.
Extra ``--key=value`` arguments override config keys (e.g. ``--cf_epochs=5``).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import recbole_letter  # noqa: E402,F401


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Beauty")
    parser.add_argument("--data_path", default="../shared/data")
    parser.add_argument("--checkpoint_dir", default="saved/benchmark_tokenizer")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids thrashing on a shared CPU)")
    parser.add_argument("--timing_epochs", type=int, default=10, help="epochs of the per-epoch cost split")
    parser.add_argument("--target_collision_rate", type=float, default=0.001)
    parser.add_argument("--released_codes", default=None, help="*.index.json to report as the reference")
    args, rest = parser.parse_known_args()
    torch.set_num_threads(args.threads)

    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_letter.quick_start import PROPERTIES_DIR, build_config
    from recbole_letter.tokenizer import trainer
    from recbole_letter.tokenizer.report import format_table, report_for_index_json, tokenizer_report

    overrides = {"data_path": args.data_path, "checkpoint_dir": args.checkpoint_dir, "show_progress": False,
                 "state": "WARNING"}  # fmt: skip
    for item in rest:
        key, _, value = item.lstrip("-").partition("=")
        overrides[key] = value
    config = build_config("SASRec", args.dataset, [str(PROPERTIES_DIR / "tokenizer.yaml")], overrides)
    init_seed(config["seed"], True)
    start = time.perf_counter()
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    dataset = train_data.dataset
    print(f"data: {dataset.item_num - 1} items, {len(dataset)} training rows ({time.perf_counter() - start:.1f} s)")
    keys = trainer.cache_keys(config, dataset)

    semantic_emb, seconds = trainer.load_or_compute_semantic_emb(config, dataset, keys["semantic"])
    print(f"(a) text embeddings {semantic_emb.shape}: {seconds:.1f} s" + (" (cached)" if seconds == 0 else ""))
    identical = 1.0 - len(np.unique(semantic_emb[1:], axis=0)) / (len(semantic_emb) - 1)
    print(f"    items whose text embedding equals another item's: collision floor {identical:.4%} "
          "(the encoder sees only the text, so no tokenizer can separate them before resolution)")
    cf_emb, cf_model, seconds = trainer.load_or_train_cf(config, dataset, keys["cf"])
    print(f"(b) CF table {cf_emb.shape} ({config['cf_epochs']} SASRec epochs): {seconds:.1f} s" + (" (cached)" if seconds == 0 else ""))

    # Per-epoch cost split: release schedule (clusters every epoch) vs the configured interval.
    for interval in sorted({1, int(config["div_cluster_interval"])}):
        timing = _copy(config, tokenizer_epochs=args.timing_epochs, div_cluster_interval=interval,
                       tokenizer_eval_interval=10**9)  # fmt: skip
        start = time.perf_counter()
        _, history = trainer.train_tokenizer(timing, semantic_emb, cf_emb, show_progress=False)
        total = time.perf_counter() - start
        n = history["epochs_run"]
        print(f"(c) per epoch, div_cluster_interval={interval}: forward/backward {history['seconds_forward_backward'] / n:.3f} s"
              f", clustering {history['seconds_clustering'] / n:.3f} s, Sinkhorn {history['seconds_sinkhorn'] / n:.3f} s"
              f" (total {total / n:.3f} s incl. init)")  # fmt: skip

    results = {}
    for name, extra in (("LETTER", {}), ("RQ-VAE (alpha=beta=0)", {"alpha": 0.0, "beta": 0.0})):
        run_config = _copy(config, **extra)
        start = time.perf_counter()
        _, art = trainer.load_or_train_item_codes(run_config, dataset, return_artifacts=True)
        seconds = time.perf_counter() - start
        history = art["history"] or {}
        reached = [e for e, r in zip(history.get("epoch", []), history.get("collision_rate", []))
                   if r <= args.target_collision_rate]  # fmt: skip
        report = tokenizer_report(dataset, art["before"], art["resolved"], art["final"], cf_emb=art["cf_emb"],
                                  z_hat=art["z_hat"], cf_model=art["cf_model"], eval_data=valid_data,
                                  out_dir=art["run_dir"], title=f"{name} on {args.dataset}",
                                  extra={"history": history, "timings": art["timings"]})  # fmt: skip
        per_epoch = art["timings"]["seconds_tokenizer"] / max(history.get("epochs_run", 1), 1)
        print(f"{name}: tokenizer {art['timings']['seconds_tokenizer']:.1f} s for {history.get('epochs_run')} epochs"
              f" ({per_epoch:.2f} s/epoch); collision <= {args.target_collision_rate:.2%} first at epoch "
              f"{reached[0] if reached else 'never'}; wall {seconds:.1f} s")  # fmt: skip
        print("collision rate by eval epoch:", list(zip(history.get("epoch", []), np.round(history.get("collision_rate", []), 5))))
        results[name] = report

    if args.released_codes and os.path.isfile(args.released_codes):
        results["released"] = report_for_index_json(config, dataset, args.released_codes, eval_data=valid_data)

    print("\n| run | collision before | after Sinkhorn | level-1 codes used | entropy L1 (bits) | CF-neighbour overlap | z_hat R@10 (valid) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        zr = (r.get("zhat_ranking") or {}).get("z_hat", {}).get("recall@10")
        print(f"| {name} | {r['collision_rate_before']:.4%} | {r['collision_rate_after_sinkhorn']:.4%} | "
              f"{r['codes_used_per_level'][0]} | {r['entropy_per_level'][0]:.2f} | {r['cf_neighbour_code_overlap']:.4f} | "
              f"{'n/a' if zr is None else f'{zr:.4f}'} |")  # fmt: skip
    sasrec = (results["LETTER"].get("zhat_ranking") or {}).get("sasrec_items", {})
    if sasrec:
        print(f"SASRec with its own item table on valid: R@10 {sasrec['recall@10']:.4f} N@10 {sasrec['ndcg@10']:.4f}")
    _ = format_table


def _copy(config, **overrides):
    import copy

    new = copy.deepcopy(config)
    for key, value in overrides.items():
        new[key] = value
    return new


if __name__ == "__main__":
    main()
