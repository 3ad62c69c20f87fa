"""Train several (model, dataset) runs side by side under one wall-clock deadline, then test each.

    python benchmarks/budget_runs.py --deadline=480 --out=budget \\
        "lt_instr:LETTER_TIGER:Instruments:item_codes_file=data/Instruments.index.json" \\
        "sasrec_beauty:SASRec:Beauty"

Made for a borrowed accelerator with a fixed time slot (a GPU lent for minutes), where a run must stop
on time *and* still finish its learning-rate schedule. Each job (``label:MODEL:DATASET[:key=value,...]``,
shipped configs plus those overrides) runs in its own process, all at once, with ``time_budget`` set to
the minutes left before the deadline: the run probes a few training steps and validation batches, sizes
its epochs to what fits (never more than the config's ``epochs``, so early stopping still applies), plans
again from its measured epochs after every epoch, and stops at the start of an epoch that would no longer fit, testing
its best checkpoint (``LetterTrainer.plan_to_deadline``; ``stopped_at_deadline`` in its JSON, "(deadline)"
in the table). The parent kills what is still running 30 s after the deadline. Keep the machine quiet for
the first minutes: a probe and a first epoch that meet another program's burst plan too few epochs.
Relative paths in a job's ``PATH_KEYS`` (and the default ``dataset/`` folder) are taken from where
``budget_runs`` started, although each job runs in its own folder.

Writes ``<out>/<label>.json`` (the result dict of ``quick_start.run``) and
``<out>/<label>.log`` per job, prints one markdown table at the end. Jobs that crash keep their log.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PATH_KEYS = ("data_path", "item_codes_file", "resume_from", "llm_path", "cf_emb_file", "prompt_template_file")


def parse_job(spec, base_dir=None):
    """``label:MODEL:DATASET[:key=value,...]`` -> (label, model, dataset, overrides typed as on the CLI).
    Relative ``PATH_KEYS`` values are taken from ``base_dir`` (each job runs in its own folder), and so is
    the default data folder ``dataset/`` when it holds the dataset (else RecBole's default applies: the
    ml-100k copy inside recbole)."""
    from recbole_letter.quick_start import parse_overrides

    label, model, dataset, *rest = spec.split(":", 3)
    pairs = rest[0].split(",") if rest and rest[0] else []
    overrides = parse_overrides([f"--{pair}" for pair in pairs])
    if base_dir:
        for key in PATH_KEYS:
            if isinstance(overrides.get(key), str):
                overrides[key] = os.path.join(base_dir, overrides[key])  # join keeps an absolute path as it is
        if "data_path" not in overrides and os.path.isdir(os.path.join(base_dir, "dataset", dataset)):
            overrides["data_path"] = os.path.join(base_dir, "dataset")
    return label, model, dataset, overrides


def run_job(label, model_name, dataset, overrides, deadline, out_dir):
    """One job in this process: ``quick_start.run`` with ``time_budget`` set to the minutes left before
    ``deadline``; writes ``<label>.json`` (the run's result dict, ``epochs_planned`` and
    ``stopped_at_deadline`` included)."""
    import torch

    from recbole_letter.benchmark import use_tf32
    from recbole_letter.quick_start import run

    use_tf32()
    overrides = {"show_progress": False, "state": "INFO", **overrides,
                 "time_budget": max(1e-3, (deadline - time.time()) / 60)}  # fmt: skip
    result = run(model_name, dataset, config_dict=overrides)
    if result["stopped_at_deadline"]:
        print(f"[{label}] {result['stopped_at_deadline']}; tested the best checkpoint so far", flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result.update(label=label, overrides=overrides, device=device)
    with open(os.path.join(out_dir, f"{label}.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"[{label}] test {result['test_result']}", flush=True)


def table(out_dir, labels):
    rows = ["| job | model | dataset | epochs | s/epoch | R@5 | R@10 | N@5 | N@10 |", "|---" * 9 + "|"]
    for label in labels:
        path = os.path.join(out_dir, f"{label}.json")
        if not os.path.isfile(path):
            rows.append(f"| {label} | (no result: see {label}.log) |||||||")
            continue
        r = json.load(open(path))
        t = r["test_result"]
        stopped = " (deadline)" if r.get("stopped_at_deadline") else ""
        rows.append(f"| {label} | {r['model']} | {r['dataset']} | {r['epochs']}/{r['epochs_planned']}{stopped} | "
                    f"{r['seconds_per_epoch']:.1f} | {t['recall@5']:.4f} | {t['recall@10']:.4f} | "
                    f"{t['ndcg@5']:.4f} | {t['ndcg@10']:.4f} |")  # fmt: skip
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("jobs", nargs="+", help="label:MODEL:DATASET[:key=value,key=value]")
    parser.add_argument("--deadline", type=float, required=True, help="seconds from now until every job must be done")
    parser.add_argument("--out", default="budget_runs")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # one job, in this process
    parser.add_argument("--base_dir", default=None, help=argparse.SUPPRESS)  # the folder relative paths start from
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.single:
        run_job(*parse_job(args.jobs[0], args.base_dir), deadline=args.deadline, out_dir=args.out)
        return
    deadline = time.time() + args.deadline
    labels, procs = [], []
    for spec in args.jobs:
        label = parse_job(spec)[0]
        labels.append(label)
        workdir = os.path.join(args.out, label)  # RecBole writes ./log and ./saved: one folder per job
        os.makedirs(workdir, exist_ok=True)
        log = open(os.path.join(args.out, f"{label}.log"), "w")
        cmd = [sys.executable, os.path.abspath(__file__), "--single", f"--deadline={deadline}",
               f"--out={os.path.abspath(args.out)}", f"--base_dir={os.getcwd()}", spec]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT))
    for proc, label in zip(procs, labels):
        try:
            proc.wait(timeout=max(1.0, deadline + 30 - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"[{label}] killed at the deadline", flush=True)
    print(table(args.out, labels))


if __name__ == "__main__":
    main()
