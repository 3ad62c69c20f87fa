"""benchmarks/budget_runs.py: job specs, and jobs kept inside their deadline (see also test_time_budget.py)."""

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


def test_a_job_that_runs_slower_than_planned_tests_its_best_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    import json
    import time

    from recbole_letter import trainer
    from recbole_letter.trainer import load_checkpoint

    name, cfg = tiny_dataset
    monkeypatch.setattr(trainer, "plan_epochs", lambda *args: args[5])  # every epoch "fits": a plan far too optimistic
    overrides = {**cfg, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 5,
                 "epochs": 200, "stopping_step": 1000}  # only the deadline may end it (not early stopping)
    budget_runs.run_job("late", "SASRec", name, overrides, deadline=time.time() + 8, out_dir=str(tmp_path))
    result = json.loads((tmp_path / "late.json").read_text())
    assert result["stopped_at_deadline"].startswith("stopped before epoch")
    assert 1 <= result["epochs"] < result["epochs_planned"] == 200  # the config's epochs
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    # and the state after its last finished epoch, to resume from
    (last,) = Path(result["checkpoint"]).parent.glob("*-last.pth")
    assert load_checkpoint(last)["epoch"] == result["epochs"] - 1


def test_a_resumed_job_keeps_its_schedule(tiny_dataset, tmp_path, monkeypatch):
    import json
    import time

    from recbole_letter import quick_start, trainer

    name, cfg = tiny_dataset
    cfg = {**cfg, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 5,
           "epochs": 4, "checkpoint_dir": str(tmp_path / "saved")}
    quick_start.run("SASRec", name, config_dict=cfg)  # leaves the state after its third epoch
    (last,) = (tmp_path / "saved").glob("*-last.pth")
    monkeypatch.setattr(trainer, "plan_epochs", lambda *args: pytest.fail("planned again"))  # the run's 4 epochs hold
    budget_runs.run_job("resumed", "SASRec", name, {**cfg, "resume_from": str(last)}, deadline=time.time() + 300,
                        out_dir=str(tmp_path))
    result = json.loads((tmp_path / "resumed.json").read_text())
    assert result["epochs_planned"] == result["epochs"] == 4 and result["stopped_at_deadline"] is None


def test_the_probe_leaves_the_run_as_it_would_have_been(tiny_dataset, tmp_path, monkeypatch):
    # same config, same epochs: a budget job trains exactly as a plain run (dropout and shuffles included)
    import json
    import time

    from recbole_letter import quick_start, trainer

    name, cfg = tiny_dataset
    cfg = {**cfg, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 5,
           "epochs": 2, "hidden_dropout_prob": 0.5, "train_batch_size": 256}
    plain = quick_start.run("SASRec", name, config_dict=cfg)
    monkeypatch.setattr(trainer, "plan_epochs", lambda *args: min(2, args[5]))
    budget_runs.run_job("same", "SASRec", name, cfg, deadline=time.time() + 300, out_dir=str(tmp_path))
    result = json.loads((tmp_path / "same.json").read_text())
    assert result["best_valid_result"] == plain["best_valid_result"]
    assert result["test_result"] == plain["test_result"]
