"""Train several (model, dataset) runs side by side under one wall-clock deadline, then test each.

    python benchmarks/budget_runs.py --deadline=480 --out=budget \\
        "lt_instr:LETTER_TIGER:Instruments:item_codes_file=data/Instruments.index.json" \\
        "sasrec_beauty:SASRec:Beauty"

Made for a borrowed accelerator with a fixed time slot (a GPU lent for minutes), where a run must stop
on time *and* still finish its learning-rate schedule. Each job (``label:MODEL:DATASET[:key=value,...]``,
shipped configs plus those overrides) runs in its own process, all at once. Before training, a job
times a few training steps and one validation batch on its real data (weights restored afterwards),
estimates one epoch (training + validation), and sets ``epochs`` to what fits before the deadline,
keeping time for the test evaluation; never more than the config's ``epochs``, so early stopping still
applies. A cosine schedule then spans the epochs that will really run (a job with ``resume_from``
plans from its next epoch). When epochs run slower than the probe said (the machine got busier), a job
stops at the start of the first epoch that would no longer fit before the deadline (see
:func:`stop_before_deadline`) and tests its best checkpoint so far (``stopped_at_deadline`` in its JSON,
"(deadline)" in the table; a job with no checkpoint yet goes on); the parent kills what is still
running 30 s after the deadline. The plan is never raised afterwards (the schedule is fixed): a probe
that ran while the machine was busier than it will be (another program's burst) plans too few epochs
(seen: 1 epoch for a 2-thread job whose probe met a benchmark, against 11 on the quiet machine), so
keep the machine quiet for the first minutes. Relative paths in a job's ``PATH_KEYS`` (and the default
``dataset/`` folder) are taken from where ``budget_runs`` started, although each job runs in its own
folder.

Writes ``<out>/<label>.json`` (the result dict of ``quick_start.run`` plus the probe's figures) and
``<out>/<label>.log`` per job, prints one markdown table at the end. Jobs that crash keep their log.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESERVE_FRACTION = 0.15  # the probe runs while the other jobs start: keep a margin for contention


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


def plan_epochs(train_epoch, valid_pass, eval_step, test_pass, seconds_left, max_epochs,
                reserve=RESERVE_FRACTION):
    """Epochs that fit in ``seconds_left`` after the test pass, with a ``reserve`` share kept free: at
    most ``max_epochs`` and at least one. LetterTrainer validates every ``eval_step``-th epoch and the
    last one, so the plan counts one validation pass more when ``eval_step`` > 1."""
    eval_step = max(1, int(eval_step))
    epoch_seconds = train_epoch + valid_pass / eval_step
    last_valid = valid_pass if eval_step > 1 else 0.0
    fits = int(((seconds_left - test_pass) * (1 - reserve) - last_valid) / max(epoch_seconds, 1e-9))
    return max(1, min(int(max_epochs), fits))


class DeadlineReached(Exception):
    """The next epoch would not fit before the deadline (raised at the start of that epoch)."""


def stop_before_deadline(trainer, deadline, train_seconds, valid_seconds, reserve_seconds):
    """Stop ``trainer.fit`` at the start of an epoch that would end later than ``deadline -
    reserve_seconds``; ``fit`` then returns the best validation so far (the run goes on to test its best
    checkpoint), and a :class:`LetterTrainer` keeps the state after the last finished epoch for resuming.

    An epoch's training is taken to last as long as the previous one or as the mean so far, whichever is
    longer (``train_seconds`` before any ran), plus, when RecBole validates after it, the longest
    validation seen (``valid_seconds`` before any). It never stops before the best checkpoint exists.
    Returns a dict: ``stopped`` (the reason, or None), ``epochs`` (started in this process)."""
    train_epoch, fit = trainer._train_epoch, trainer.fit
    clock = {"stopped": None, "epochs": 0, "train": train_seconds, "train_total": 0.0, "valid": valid_seconds,
             "ended": None, "validated": False}  # fmt: skip

    def guarded(train_data, epoch_idx, *args, **kwargs):
        now = time.time()
        if clock["validated"]:  # the time since the previous epoch ended went to its validation
            clock["valid"] = max(clock["valid"], now - clock["ended"])
        validates = (epoch_idx + 1) % trainer.eval_step == 0 or epoch_idx == trainer.epochs - 1
        need = clock["train"] + (clock["valid"] if validates else 0.0)
        if now + need > deadline - reserve_seconds and os.path.isfile(trainer.saved_model_file):
            if getattr(trainer, "save_last", False) and epoch_idx > trainer.start_epoch:
                trainer._save_last(epoch_idx - 1, train_data)  # LetterTrainer: resumable from here
            raise DeadlineReached(f"stopped before epoch {epoch_idx + 1}: {deadline - now:.1f}s left, "
                                  f"it needs ~{need:.1f}s")
        loss = train_epoch(train_data, epoch_idx, *args, **kwargs)
        clock["epochs"] += 1
        took = time.time() - now
        clock["train_total"] += took
        clock["train"] = max(took, clock["train_total"] / clock["epochs"])
        clock["ended"], clock["validated"] = time.time(), validates
        return loss

    def fit_until_deadline(*args, **kwargs):
        try:
            return fit(*args, **kwargs)
        except DeadlineReached as stop:
            clock["stopped"] = str(stop)
            return trainer.best_valid_score, trainer.best_valid_result

    trainer._train_epoch, trainer.fit = guarded, fit_until_deadline
    return clock


def run_job(label, model_name, dataset, overrides, deadline, out_dir):
    """One job in this process: ``quick_start.run`` with ``epochs`` sized by a probe before training
    (counted from the run's next epoch when it resumes); writes ``<label>.json`` (run's result dict plus
    the probe's figures and ``stopped_at_deadline``)."""
    import torch

    from recbole_letter.benchmark import use_tf32
    from recbole_letter.plan import probe_epoch_seconds
    from recbole_letter.quick_start import run

    use_tf32()
    guard = {}

    def size_epochs(config, model, trainer, train_data, valid_data, test_data):
        train_epoch, valid_pass = probe_epoch_seconds(config, model, train_data, valid_data)
        test_pass = valid_pass * len(test_data) / max(1, len(valid_data))
        left = deadline - time.time()
        eval_step = int(config["eval_step"] or 1)
        first = trainer.start_epoch  # > 0 when resumed
        epochs = first + plan_epochs(train_epoch, valid_pass, eval_step, test_pass, left, config["epochs"] - first)
        print(f"[{label}] probe: train epoch {train_epoch:.1f}s, valid pass {valid_pass:.1f}s -> epochs {first + 1}-"
              f"{epochs} in {left:.0f}s (config allows {config['epochs']})", flush=True)
        trainer.epochs = config["epochs"] = epochs
        guard["clock"] = stop_before_deadline(trainer, deadline, train_epoch, valid_pass, test_pass)
        return {"probe_train_epoch_s": train_epoch, "probe_valid_pass_s": valid_pass, "epochs_planned": epochs}

    overrides = {"show_progress": False, "state": "INFO", **overrides}
    result = run(model_name, dataset, config_dict=overrides, before_fit=size_epochs)
    stopped = guard["clock"]["stopped"] if "clock" in guard else None
    if stopped:
        print(f"[{label}] {stopped}; tested the best checkpoint so far", flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result.update(label=label, overrides=overrides, device=device, stopped_at_deadline=stopped)
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
