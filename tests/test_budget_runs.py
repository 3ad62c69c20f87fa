"""benchmarks/budget_runs.py: job specs and the epoch plan that keeps a run inside its deadline."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("budget_runs", Path(__file__).parents[1] / "benchmarks" / "budget_runs.py")
budget_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(budget_runs)


def test_job_spec_overrides_are_typed():
    label, model, dataset, overrides = budget_runs.parse_job(
        "lt:LETTER_TIGER:Beauty:item_codes_file=/d/x.index.json,beam_batch_size=1024,tau=0.7,enable_amp=False,tokenizer_encoder_layers=[64]")
    assert (label, model, dataset) == ("lt", "LETTER_TIGER", "Beauty")
    assert overrides == {"item_codes_file": "/d/x.index.json", "beam_batch_size": 1024, "tau": 0.7, "enable_amp": False,
                         "tokenizer_encoder_layers": [64]}
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

    class Trainer:  # RecBole's fit loop in miniature: 10 s of training per epoch, 8 s per validation
        saved_model_file = str(tmp_path / "best.pth")
        eval_step, epochs, start_epoch = 2, 50, 0
        best_valid_score, best_valid_result = 0.5, {"ndcg@10": 0.5}
        trained = 0

        def _train_epoch(self, train_data, epoch_idx):
            now["t"] += 10
            self.trained += 1

        def fit(self, write_checkpoint=True):
            for epoch_idx in range(self.start_epoch, self.epochs):
                self._train_epoch(None, epoch_idx)
                if (epoch_idx + 1) % self.eval_step == 0:
                    now["t"] += 8
                    if write_checkpoint:
                        open(self.saved_model_file, "w").close()
            return "finished"

    # the probe said 5 s + 3 s: epochs end at 10, 28 (validated), 38, 56, 66, 84; epoch 7 needs 10 s
    # more by then (the longer of the last and the mean), which would pass 100 - 10 s of reserve
    trainer = Trainer()
    clock = budget_runs.stop_before_deadline(trainer, deadline=100, train_seconds=5, valid_seconds=3,
                                             reserve_seconds=10)
    assert trainer.fit() == (0.5, {"ndcg@10": 0.5})  # the best so far, for the test to load
    assert trainer.trained == clock["epochs"] == 6 and clock["stopped"].startswith("stopped before epoch 7")
    # with no checkpoint to test, it trains on whatever the time
    now["t"] = 0.0
    trainer = Trainer()
    trainer.saved_model_file = str(tmp_path / "none.pth")
    clock = budget_runs.stop_before_deadline(trainer, deadline=5, train_seconds=5, valid_seconds=3, reserve_seconds=1)
    assert trainer.fit(write_checkpoint=False) == "finished" and clock["stopped"] is None and trainer.trained == 50


def test_a_job_that_runs_slower_than_planned_tests_its_best_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    import json
    import time

    from recbole_letter.trainer import load_checkpoint

    name, cfg = tiny_dataset
    monkeypatch.setattr(budget_runs, "plan_epochs", lambda *args: 200)  # a probe far too optimistic
    overrides = {**cfg, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 5,
                 "stopping_step": 1000}  # only the deadline may end it (not early stopping)
    budget_runs.run_job("late", "SASRec", name, overrides, deadline=time.time() + 8, out_dir=str(tmp_path))
    result = json.loads((tmp_path / "late.json").read_text())
    assert result["stopped_at_deadline"].startswith("stopped before epoch")
    assert 1 <= result["epochs"] < result["epochs_planned"] == 200
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    # and the state after its last finished epoch, to resume from
    (last,) = Path(result["checkpoint"]).parent.glob("*-last.pth")
    assert load_checkpoint(last)["epoch"] == result["epochs"] - 1


def test_a_resumed_job_plans_from_its_next_epoch(tiny_dataset, tmp_path, monkeypatch):
    import json
    import time

    from recbole_letter import quick_start

    name, cfg = tiny_dataset
    cfg = {**cfg, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 5,
           "epochs": 4, "checkpoint_dir": str(tmp_path / "saved")}
    quick_start.run("SASRec", name, config_dict=cfg)  # leaves the state after its third epoch
    (last,) = (tmp_path / "saved").glob("*-last.pth")
    monkeypatch.setattr(budget_runs, "plan_epochs", lambda *args: 1)  # one more epoch fits
    budget_runs.run_job("resumed", "SASRec", name, {**cfg, "resume_from": str(last)}, deadline=time.time() + 300,
                        out_dir=str(tmp_path))
    result = json.loads((tmp_path / "resumed.json").read_text())
    assert result["epochs_planned"] == result["epochs"] == 4 and result["stopped_at_deadline"] is None


def test_the_probe_leaves_the_run_as_it_would_have_been(tiny_dataset, tmp_path, monkeypatch):
    # same config, same epochs: a budget job trains exactly as a plain run (dropout and shuffles included)
    import json
    import time

    from recbole_letter import quick_start

    name, cfg = tiny_dataset
    cfg = {**cfg, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 5,
           "epochs": 2, "hidden_dropout_prob": 0.5, "train_batch_size": 256}
    plain = quick_start.run("SASRec", name, config_dict=cfg)
    monkeypatch.setattr(budget_runs, "plan_epochs", lambda *args: 2)
    budget_runs.run_job("same", "SASRec", name, cfg, deadline=time.time() + 300, out_dir=str(tmp_path))
    result = json.loads((tmp_path / "same.json").read_text())
    assert result["best_valid_result"] == plain["best_valid_result"]
    assert result["test_result"] == plain["test_result"]
