"""time_budget: a run's epochs sized to the minutes it may take, re-planned from its first epoch, and a stop
before an epoch that would end past the deadline (LetterTrainer.plan_to_deadline, quick_start.apply_time_budget)."""

import time
import types

import pytest
import torch

from recbole_letter import quick_start, trainer as letter_trainer
from recbole_letter.quick_start import build_trainer, free_port
from recbole_letter.trainer import DeadlineReached, LetterTrainer, load_checkpoint, plan_epochs

SMALL_SASREC = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 5}


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
    assert plan_epochs(*args) == expected


def test_an_epoch_that_would_end_past_the_deadline_is_not_started(tmp_path):
    best = tmp_path / "best.pth"
    best.touch()
    now = time.time()

    def trainer(trained, valid=8.0, deadline_in=100.0, eval_step=2):
        return types.SimpleNamespace(pace={"train": 5.0, "valid": valid, "test": 3.0, "trained": trained},
                                     eval_step=eval_step, epochs_to_run=50, deadline=now + deadline_in,
                                     saved_model_file=str(best))

    def stops(fake, epoch_idx):
        try:
            LetterTrainer._stop_if_late(fake, epoch_idx)
        except DeadlineReached as stop:
            return str(stop)
        return None

    # epochs of 10 s so far: epoch 7 (index 6, no validation after it) needs 10 + 3 s of test
    assert stops(trainer([10.0] * 6, deadline_in=14.0), 6) is None
    assert stops(trainer([10.0] * 6, deadline_in=12.0), 6).startswith("stopped before epoch 7 of 50")
    # an epoch with its validation after it needs the validation too (index 7: (7 + 1) % 2 == 0)
    assert stops(trainer([10.0] * 7, deadline_in=20.0), 7).startswith("stopped before epoch 8")
    # the longer of the last epoch and the mean: a slowing machine is seen at once
    assert stops(trainer([10.0, 10.0, 25.0], deadline_in=27.0, eval_step=100), 3) is not None
    # before any epoch ran, the probe's estimate counts
    assert stops(trainer([], deadline_in=7.0), 0) is not None
    # with no best checkpoint yet there is nothing to test: it trains on
    best.unlink()
    assert stops(trainer([10.0] * 6, deadline_in=1.0), 6) is None


def _sasrec(tiny_dataset, **overrides):
    name, cfg = tiny_dataset
    config, _, train_data, valid_data, test_data = quick_start.prepare(
        "SASRec", name, config_dict={**cfg, **SMALL_SASREC, "train_batch_size": 64, **overrides})
    model = quick_start.get_model_class("SASRec")(config, train_data.dataset)
    return config, model, build_trainer(config, model), train_data, valid_data, test_data


def test_the_plan_is_made_again_from_the_first_epoch_and_the_schedule_follows(tiny_dataset, monkeypatch, caplog):
    plans = iter([5, 2])  # the probe says 5 epochs fit; the first measured epoch says 1 + 2

    def planned(*args, **kwargs):
        return next(plans)

    monkeypatch.setattr(letter_trainer, "plan_epochs", planned)
    config, model, trainer, train_data, valid_data, test_data = _sasrec(
        tiny_dataset, epochs=8, lr_scheduler="cosine", warmup_ratio=0.1, time_budget=60)
    assert quick_start.apply_time_budget(config, model, trainer, train_data, valid_data, test_data) == 5
    assert trainer.epochs_to_run == 5 and trainer.epochs == config["epochs"] == 8  # the config's epochs: the cap
    with caplog.at_level("INFO"):
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    assert trainer.epochs_to_run == trainer.planned_epochs == 3 == len(trainer.train_loss_dict)
    assert "3 epochs fit, not 5" in caplog.text
    # the cosine spans the 3 epochs that ran: the last step leaves the learning rate at 0
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the state after epoch 2 carries the plan: a resumed run keeps the schedule (and plans nothing)
    last = load_checkpoint(trainer.last_model_file)
    assert last["planned_epochs"] == 3
    config, model, resumed, train_data, valid_data, test_data = _sasrec(
        tiny_dataset, epochs=8, lr_scheduler="cosine", warmup_ratio=0.1, time_budget=60,
        resume_from=trainer.last_model_file)
    resumed.resume_checkpoint(trainer.last_model_file)
    assert resumed.epochs_to_run == 3
    monkeypatch.setattr(letter_trainer, "plan_epochs", lambda *args, **kwargs: pytest.fail("planned again"))
    assert quick_start.apply_time_budget(config, model, resumed, train_data, valid_data, test_data) == 3


def test_a_run_s_epochs_are_cut_to_its_budget(tiny_dataset):
    name, cfg = tiny_dataset
    # 15 seconds, far below what 200 epochs take (~0.2 s each here, more on a loaded machine)
    result = quick_start.run("SASRec", name, config_dict={**cfg, **SMALL_SASREC, "epochs": 200, "stopping_step": 1000,
                                                          "time_budget": 0.25})
    assert 1 <= result["epochs"] <= result["epochs_planned"] < 200
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}


def test_time_budget_needs_a_trainer_that_can_plan(tiny_dataset):
    name, cfg = tiny_dataset
    with pytest.raises(ValueError, match="time_budget: Pop is trained by"):
        quick_start.run("Pop", name, config_dict={**cfg, "time_budget": 10})


def test_ddp_ranks_plan_and_stop_as_one(tiny_dataset, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    name, cfg = tiny_dataset
    result = quick_start.run("BPR", name, config_dict={**cfg, "embedding_size": 8, "nproc": 2, "port": free_port(),
                                                       "epochs": 3, "time_budget": 10})
    # every rank probed, the slowest estimates counted, rank 0's plan held on both (a rank with another
    # plan would wait at a collective that its peer never reaches)
    assert result["epochs_planned"] == result["epochs"] == 3 and result["stopped_at_deadline"] is None
