"""One command for LETTER generative recommenders and RecBole baselines on one split.

    python run_recbole_letter.py --model=SASRec --dataset=ml-100k
    python run_recbole_letter.py --model=SASRec,LightGCN,BPR --dataset=ml-100k
    python run_recbole_letter.py --model=LETTER_TIGER --dataset=ml-100k --tokenize_only=True
    python run_recbole_letter.py --model=BPR --dataset=ml-100k --nproc=2
    python run_recbole_letter.py --checkpoint=saved/SASRec-ml-100k-....pth   # evaluate a saved run, no training
    python run_recbole_letter.py --benchmark=table1 --dataset=Beauty --data_path=../shared/data [--quick]
    python run_recbole_letter.py --benchmark=ablation|codes --dataset=Beauty ...
    python run_recbole_letter.py --benchmark=sweep --param=tau --dataset=Beauty ...
    python run_recbole_letter.py --benchmark=tune --model=SASRec --params_file=hyper.test [--algo=bayes]

Arguments follow RecBole: --model (one name or a comma list), --dataset, --config_files (YAML files, comma
separated, or space separated inside one quoted argument) and any --key=value config override. Every run has a
run id (<model>-<dataset>-<YYYYmmdd-HHMMSS>-<6 hex>) naming its checkpoints (<checkpoint_dir>/<run id>.pth and
<run id>-last.pth). --results_dir (default results/) accumulates one row per run in <dataset>.jsonl (run id, time,
config digest, metrics; safe with runs writing at once) and the table of all rows as <dataset>.md/.csv/.json.
"""

import argparse
import sys

from recbole_letter import benchmark, config_check, quick_start

RUNNER_KEYS = ("results_dir",)


def print_single(result):
    source = f", evaluated from {result['checkpoint']}" if result.get("mode") == "evaluate" else ""
    print(f"{result['model']} on {result['dataset']} (run {result['run_id']}{source})")
    print("split  " + "  ".join(f"{m:>9}" for m in benchmark.METRIC_ORDER))
    for split, key in (("valid", "best_valid_result"), ("test", "test_result")):
        print(f"{split:<6} " + "  ".join(f"{result[key][m]:>9.4f}" for m in benchmark.METRIC_ORDER))


def print_side_by_side(results):
    """Several models on one split: test metrics, valid NDCG@10 and the run id, a row per model (the results
    files hold every column)."""
    width = max(len("model"), *(len(r["model"]) for r in results))
    print(f"{'model':<{width}}  " + "  ".join(f"{'test ' + m:>15}" for m in benchmark.METRIC_ORDER)
          + f"  {'valid ndcg@10':>13}  run id")
    for r in results:
        print(f"{r['model']:<{width}}  " + "  ".join(f"{r['test_result'][m]:>15.4f}" for m in benchmark.METRIC_ORDER)
              + f"  {r['best_valid_result']['ndcg@10']:>13.4f}  {r['run_id']}")


def run_benchmark(args, config_files, overrides, models):
    common = dict(config_files=config_files, overrides=overrides, out_dir=args.results_dir, quick=args.quick)
    if args.benchmark == "table1":
        return benchmark.table1(args.dataset, models=models, **common)
    if args.benchmark == "ablation":
        return benchmark.ablation(args.dataset, **common)
    if args.benchmark == "codes":
        return benchmark.codes(args.dataset, **common)
    if args.benchmark == "tune":
        if not args.params_file or not models or len(models) != 1:
            raise ValueError("--benchmark=tune needs one --model and --params_file (RecBole's hyper-parameter file)")
        return benchmark.tune(args.dataset, models[0], args.params_file, args.algo, args.max_evals, **common)
    if not args.param:
        raise ValueError("--benchmark=sweep needs --param=<tau|alpha|beta|num_levels|codebook_size>")
    values = None
    if args.values:
        values = [type_value(v) for v in args.values.split(",")]
        values = [config_check.check_value(args.param, v) for v in values]
    return benchmark.sweep(args.dataset, args.param, values, **common)


def type_value(text):
    """One ``--values`` entry typed like a ``--key=value`` text (a literal, never eval'd)."""
    return config_check.parse_value(text)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes are one ``error:`` line (exit status 2) like every other bad value."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def check_arguments(args, models, overrides, config_files):
    """Every name and value checked before anything trains: model names; for a training run, the whole
    config of each model (keys, types, ranges, dataset files) as ``build_config`` checks it, so that a bad
    second model or a bad value seen only in a spawned DDP rank fails here, in one line."""
    for model in models or []:
        config_check.check_model_name(model)
    if not args.benchmark and not args.checkpoint:
        for model in models or ["LETTER_TIGER"]:
            config_check.check_beam_size(quick_start.build_config(model, args.dataset, config_files, overrides), model)


def main(argv=None):
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)  # --data=x is a misspelt key, not --dataset
    parser.add_argument("--model", default=None, help="model name or comma list (default LETTER_TIGER)")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config_files", default=None, help="YAML files, comma separated (or space separated, quoted)")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--benchmark", choices=["table1", "ablation", "sweep", "codes", "tune"], default=None,
                        help="reproduce a paper table/figure (resumable; docs/results.md)")
    parser.add_argument("--param", default=None, help="--benchmark=sweep: tau|alpha|beta|num_levels|codebook_size")
    parser.add_argument("--values", default=None, help="--benchmark=sweep: comma list (default: the paper's range)")
    parser.add_argument("--params_file", default=None,
                        help="--benchmark=tune: RecBole's hyper-parameter file (lines like 'tau choice [0.7,1.0]')")
    parser.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"],
                        help="--benchmark=tune: RecBole HyperTuning's search algorithm")
    parser.add_argument("--max_evals", type=int, default=100, help="--benchmark=tune: trials for random / bayes")
    parser.add_argument("--quick", action="store_true", help="--benchmark: token epochs and sizes (smoke test)")
    parser.add_argument("--checkpoint", default=None, help="evaluate this saved checkpoint (valid + test), no training")
    args, unknown = parser.parse_known_args(argv)
    try:
        overrides = quick_start.parse_overrides(unknown)
        config_files = args.config_files.replace(",", " ").split() if args.config_files else None
        models = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else None
        check_arguments(args, models, overrides, config_files)
        if args.benchmark:
            print(run_benchmark(args, config_files, overrides, models))
            print(f"written under {args.results_dir}/")
            return 0
        if args.checkpoint:
            results = [quick_start.evaluate_checkpoint(args.checkpoint, overrides)]
        else:
            results = [quick_start.run(m, args.dataset, config_files, overrides) for m in models or ["LETTER_TIGER"]]
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = [r for r in results if r is not None]
    if not results or "tokenizer_report" in results[0]:
        return 0
    if len(results) == 1:
        print_single(results[0])
    else:
        print_side_by_side(results)
    dataset = results[0]["dataset"]  # with --checkpoint: the checkpoint's own dataset
    benchmark.write_results(results, args.results_dir, dataset)
    print(f"rows appended to {args.results_dir}/{dataset}.jsonl; every run's table: "
          f"{args.results_dir}/{dataset}.{{md,csv,json}}")
    return 0


def cli():
    """The ``run_recbole_letter`` command an install adds (setup.py's console script)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
