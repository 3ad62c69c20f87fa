"""benchmarks/budget_runs.py: job specs and the epoch plan that keeps a run inside its deadline."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("budget_runs", Path(__file__).parents[1] / "benchmarks" / "budget_runs.py")
budget_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(budget_runs)


def test_job_spec_overrides_are_typed():
    label, model, dataset, overrides = budget_runs.parse_job(
        "lt:LETTER_TIGER:Beauty:item_codes_file=/d/x.index.json,beam_batch_size=1024,tau=0.7,freeze=False,layers=[64]")
    assert (label, model, dataset) == ("lt", "LETTER_TIGER", "Beauty")
    assert overrides == {"item_codes_file": "/d/x.index.json", "beam_batch_size": 1024, "tau": 0.7, "freeze": False,
                         "layers": [64]}
    assert budget_runs.parse_job("s:SASRec:ml-100k")[3] == {}


def test_job_paths_are_relative_to_where_budget_runs_started():
    # every job runs in its own folder (<out>/<label>): a relative data_path must not resolve there
    overrides = budget_runs.parse_job("lt:LETTER_TIGER:Beauty:data_path=../shared/data,item_codes_file=/d/x.json,"
                                      "checkpoint_dir=saved", base_dir="/work/main")[3]
    assert overrides == {"data_path": "/work/main/../shared/data", "item_codes_file": "/d/x.json",
                         "checkpoint_dir": "saved"}  # the job's own folder, as intended


@pytest.mark.parametrize(
    "args, expected",
    [
        ((10.0, 4.0, 1, 2.0, 1000.0, 200, 0.0), 71),  # (1000 - 2) / 14
        ((10.0, 4.0, 2, 2.0, 1000.0, 200, 0.0), 82),  # validation every other epoch and after the last one:
        # (1000 - 2 - 4) / 12
        ((10.0, 4.0, 4, 2.0, 80.0, 200, 0.0), 6),  # (80 - 2 - 4) / 11; not cut to a multiple of eval_step
        # (LetterTrainer validates the last epoch whatever eval_step is)
        ((10.0, 4.0, 1, 2.0, 1000.0, 200, 0.2), 57),  # a 20% margin
        ((10.0, 4.0, 1, 2.0, 1000.0, 30, 0.0), 30),  # never more than the config's epochs
        ((10.0, 4.0, 1, 2.0, 5.0, 200, 0.0), 1),  # at least one epoch
    ],
)
def test_plan_epochs(args, expected):
    assert budget_runs.plan_epochs(*args) == expected


def test_a_job_stops_at_the_start_of_an_epoch_that_would_miss_the_deadline(tmp_path, monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(budget_runs, "time", type("Clock", (), {"time": staticmethod(lambda: now["t"])}))

    class Trainer:
        saved_model_file = str(tmp_path / "best.pth")
        epochs_run = 0

        def _train_epoch(self, *args):
            self.epochs_run += 1

    trainer = Trainer()
    # the probe said 200 s per epoch: the first epoch would miss the deadline, but there is no checkpoint yet
    clock = budget_runs.stop_before_deadline(trainer, deadline=100, first_epoch_seconds=200, reserve_seconds=10)
    trainer._train_epoch()
    now["t"] = 20  # epoch 1 took 20 s: epoch 2 fits
    trainer._train_epoch()
    (tmp_path / "best.pth").write_bytes(b"")  # validated: from now on it may stop
    for t in (45, 60):  # estimates max(last, mean): 25 -> ends at 70, 20 -> 80; both before 100 - 10
        now["t"] = t
        trainer._train_epoch()
    now["t"] = 75  # last 15 s, mean 18.75 s: epoch 5 would end at 93.75
    with pytest.raises(budget_runs.DeadlineReached, match="before epoch 5"):
        trainer._train_epoch()
    assert trainer.epochs_run == clock["epochs"] == 4


def test_a_job_that_runs_slower_than_planned_tests_its_best_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    import json
    import time

    name, cfg = tiny_dataset
    monkeypatch.setattr(budget_runs, "plan_epochs", lambda *args: 200)  # a probe far too optimistic
    overrides = {**cfg, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 5,
                 "stopping_step": 1000}  # only the deadline may end it (not early stopping)
    budget_runs.run_job("late", "SASRec", name, overrides, deadline=time.time() + 8, out_dir=str(tmp_path))
    result = json.loads((tmp_path / "late.json").read_text())
    assert result["stopped_at_deadline"].startswith("stopped before epoch")
    assert 1 <= result["best_epoch"] <= result["epochs"] < result["epochs_planned"] == 200
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
