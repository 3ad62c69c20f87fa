"""Seconds per training epoch of the six baselines with the shipped configs.

    python benchmarks/baselines.py --dataset=ml-100k --epochs=2

Prints one markdown row per model (s/epoch averaged over --epochs, evaluation time, test metrics after
those epochs). Run it from a scratch folder: RecBole writes ./log, ./log_tensorboard and ./saved.
"""

import argparse

from recbole_letter.benchmark import write_results
from recbole_letter.model import BASELINES
from recbole_letter.quick_start import run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default=",".join(BASELINES))
    parser.add_argument("--results_dir", default="results")
    args = parser.parse_args()
    overrides = {"epochs": args.epochs, "show_progress": False, "state": "WARNING"}
    if args.data_path:
        overrides["data_path"] = args.data_path
    results = [run(model, args.dataset, config_dict=overrides) for model in args.models.split(",")]
    print(write_results(results, args.results_dir, f"baselines-{args.dataset}"))


if __name__ == "__main__":
    main()
