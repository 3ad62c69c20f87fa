"""time_budget: a run's epochs sized to the minutes it may take, re-planned from its measured epochs, and a stop
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


def test_an_epoch_that_would_end_past_the_deadline_is_not_started(tmp_path, monkeypatch):
    monkeypatch.setattr(letter_trainer, "time", types.SimpleNamespace(time=lambda: 1000.0))  # a clock that stands
    best = tmp_path / "best.pth"
    best.touch()

    def fake(trained, deadline_in, every=2, valid=8.0, saved=True):
        return types.SimpleNamespace(pace={"train": 5.0, "valid": valid, "test": 3.0, "trained": trained},
                                     configured_eval_step=every, epochs_to_run=50, deadline=1000.0 + deadline_in,
                                     saved_model_file=str(best), save_last=saved)

    def outcome(trainer, epoch_idx, validates=False):
        try:
            return LetterTrainer._keep_to_deadline(trainer, epoch_idx, validates)
        except DeadlineReached as stop:
            return str(stop)

    # epochs of 10 s so far; the test needs 3 s. Not validated, with room for one more after it: trained as is
    assert outcome(fake([10.0] * 6, deadline_in=40.0), 6) is False
    # room for this epoch, its validation and the test, but not for a next epoch: the last one, validated
    assert outcome(fake([10.0] * 6, deadline_in=30.0), 6) is True
    # no room for this epoch, its validation and the test: stopped (the best checkpoint so far is tested),
    # also where the epoch alone and the test would fit: trained but never validated, it would not count
    assert outcome(fake([10.0] * 6, deadline_in=12.0), 6).startswith("stopped before epoch 7 of 50")
    assert outcome(fake([10.0] * 6, deadline_in=15.0), 6).startswith("stopped before epoch 7 of 50")
    # an epoch that validates needs its validation too
    assert outcome(fake([10.0] * 7, deadline_in=20.0), 7, validates=True).startswith("stopped before epoch 8")
    assert outcome(fake([10.0] * 7, deadline_in=22.0), 7, validates=True) is True
    # the longer of the last epoch and the mean: a slowing machine is seen at once
    assert outcome(fake([10.0, 10.0, 25.0], deadline_in=27.0), 3).startswith("stopped")
    # before any epoch ran, the probe's estimate counts
    assert outcome(fake([], deadline_in=7.0), 0).startswith("stopped")
    # eval_step 0 (no validation at all): never made to validate
    assert outcome(fake([10.0] * 6, deadline_in=30.0, every=0), 6) is False
    # with no best checkpoint there is nothing to test: it trains on, and validates to have one
    best.unlink()
    assert outcome(fake([10.0] * 6, deadline_in=1.0), 6) is True
    # unless nothing is saved (fit(saved=False)): the weights themselves are tested, once an epoch has trained
    assert outcome(fake([10.0] * 6, deadline_in=1.0, saved=False), 6).startswith("stopped")
    assert outcome(fake([], deadline_in=1.0, saved=False), 0) is True


def test_the_time_between_epochs_joins_the_estimates():
    pace = {"valid": 8.0, "probe_valid": 8.0, "test": 4.0, "probe_test": 4.0, "trained": [10.0], "validations": [],
            "ended": 100.0, "validated": True}
    LetterTrainer._measure_pace(types.SimpleNamespace(pace=pace), 130.0)  # a validation (and a save) of 30 s
    assert pace["valid"] == 30.0 and pace["test"] == 15.0 and pace["trained"] == [10.0]
    pace.update(ended=200.0, validated=False)
    LetterTrainer._measure_pace(types.SimpleNamespace(pace=pace), 202.0)  # no validation: 2 s of saving, say
    assert pace["trained"] == [12.0] and pace["valid"] == 30.0
    pace.update(ended=300.0, validated=True)
    LetterTrainer._measure_pace(types.SimpleNamespace(pace=pace), 320.0)  # a shorter one: the longest counts
    assert pace["valid"] == 30.0


def test_a_validation_faster_than_the_probe_said_replaces_its_estimate():
    """The probe's estimate counts only until a validation is measured: it is not a floor."""
    pace = {"valid": 33.0, "probe_valid": 33.0, "test": 33.0, "probe_test": 33.0, "trained": [150.0],
            "validations": [], "ended": 100.0, "validated": True}
    LetterTrainer._measure_pace(types.SimpleNamespace(pace=pace), 127.0)
    assert pace["valid"] == 27.0 and pace["test"] == pytest.approx(27.0)


def test_the_plan_is_made_again_after_every_epoch_from_the_median_epoch(monkeypatch):
    def replans(epoch_idx, measured, planned=45, resumed=None):
        fake = types.SimpleNamespace(pace={"trained": [170.0] * measured}, epochs_to_run=planned, resumed=resumed)
        return LetterTrainer._replans(fake, epoch_idx)

    assert not replans(0, 0)  # nothing measured yet: the probe's plan
    assert replans(1, 1) and replans(2, 2) and replans(14, 14) and replans(30, 30) and replans(44, 44)
    assert not replans(45, 45) and not replans(3, 3, planned=3)  # never past the plan
    assert not replans(1, 1, resumed={"planned_epochs": 45})  # a resumed run keeps its schedule

    def replan(trained, epoch_idx, fit):  # fit: what plan_epochs says fits after epoch_idx
        seen, logged = [], []
        monkeypatch.setattr(letter_trainer, "plan_epochs", lambda train, *args: seen.append(train) or fit)
        fake = types.SimpleNamespace(pace={"trained": trained, "train": 186.0, "valid": 33.0, "test": 33.0},
                                     deadline=9000.0, configured_eval_step=4, epochs=50, planned_epochs=45,
                                     scheduler=None, logger=types.SimpleNamespace(info=logged.append))
        LetterTrainer._replan(fake, epoch_idx)
        return seen[0], fake.planned_epochs, logged

    monkeypatch.setattr(letter_trainer, "time", types.SimpleNamespace(time=lambda: 1000.0))
    # one slow epoch (another program ran beside it) moves the median, not the plan's pace
    assert replan([176.0, 240.0, 160.0, 165.0, 162.0], 5, 42) == (165.0, 47, [
        "time_budget: epochs 1-5 trained in a median of 2.8 min (the probe said 3.1 min): 47 epochs fit, not 45"])
    # after two epochs, the faster one (a first epoch's one-off costs do not count)
    assert replan([176.0, 165.0], 2, 43) == (165.0, 45, [])
    assert replan([176.0], 1, 46) == (176.0, 47, [
        "time_budget: epoch 1 trained in 2.9 min (the probe said 3.1 min): 47 epochs fit, not 45"])
    # later, a plan one epoch off is kept (no cosine rebuilt back and forth); two epochs off, it moves
    assert replan([165.0] * 5, 5, 41)[1:] == (45, [])
    assert replan([165.0] * 5, 5, 38)[1] == 43


@pytest.mark.parametrize("warmup_steps, total_steps", [(1, 1), (1, 7), (3, 50), (10, 1000), (25, 2580)])
def test_the_cosine_is_transformers_to_the_bit(warmup_steps, total_steps):
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps).lr_lambdas[0]
    ours = letter_trainer.CosineToEnd(warmup_steps, total_steps)
    assert [ours(step) for step in range(total_steps + 2)] == [theirs(step) for step in range(total_steps + 2)]


@pytest.mark.parametrize("new_total", [1200, 800, 701])
def test_a_new_horizon_keeps_the_rate_and_ends_it_at_zero(new_total):
    before = letter_trainer.CosineToEnd(10, 1000)
    after = before.ending_at(700, new_total)
    assert after(700) == before(700) and after(3) == before(3)  # the same rate at the step reached; warm-up kept
    rates = [after(step) for step in range(700, new_total + 1)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # it only falls from there
    assert rates[-1] == pytest.approx(0.0, abs=1e-15)
    again = letter_trainer.CosineToEnd(**after.state())  # what -last.pth keeps
    assert [again(step) for step in range(0, new_total + 1, 7)] == [after(step) for step in range(0, new_total + 1, 7)]


def _planned_in_all(totals):
    """A stand-in for plan_epochs: ``totals[epoch_idx]`` epochs in all (the last one for later epochs), as
    the epochs left after ``epoch_idx``, which _replan receives as the config's 12 epochs less those done."""
    def planned(train, valid, eval_step, test, left, max_epochs):
        done = 12 - max_epochs
        return totals[min(done, len(totals) - 1)] - done

    return planned


def _record_rates(trainer):
    """The learning rate of every optimiser step, as it steps (the scheduler sets the next one after it)."""
    rates = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, *_: rates.append(optimizer.param_groups[0]["lr"]))
    return rates


def test_a_plan_moved_late_goes_on_from_the_rate_reached_and_a_resumed_run_follows_it(tiny_dataset, tmp_path,
                                                                                     monkeypatch, caplog):
    # 9 epochs planned; after the 3rd, 7 in all (the cosine squeezed); after the 6th, past a third, 11 in all
    monkeypatch.setattr(letter_trainer, "plan_epochs", _planned_in_all([9, 9, 9, 7, 7, 7, 11]))
    # batches of 512 (27 an epoch on the slice): enough steps for the schedule's shape, 8x fewer than batch 64
    run = dict(epochs=12, lr_scheduler="cosine", warmup_ratio=0.1, time_budget=60, eval_step=4, train_batch_size=512)
    config, model, trainer, train_data, valid_data, test_data = _sasrec(
        tiny_dataset, **run, checkpoint_dir=str(tmp_path / "whole"))
    assert quick_start.apply_time_budget(config, model, trainer, train_data, valid_data, test_data) == 9
    rates = _record_rates(trainer)
    with caplog.at_level("INFO"):
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    assert trainer.epochs_to_run == 11 == len(trainer.train_loss_dict)
    assert "7 epochs fit, not 9; the schedule goes on" in caplog.text
    assert "11 epochs fit, not 7; the schedule goes on" in caplog.text
    batches = len(train_data)
    assert len(rates) == 11 * batches
    warmup = trainer.schedule.warmup_steps
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1:]))  # no rise at either new plan
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # 0 after the last step

    # the same run stopped in its 9th epoch, after the late plan, and resumed: the rest of the same rates
    train_batches = LetterTrainer._train_batches

    def stopped_in_ninth_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == 8:
            raise KeyboardInterrupt
        return train_batches(self, train_data, epoch_idx, *args, **kwargs)

    config, model, stopped, train_data, valid_data, test_data = _sasrec(
        tiny_dataset, **run, checkpoint_dir=str(tmp_path / "stopped"))
    quick_start.apply_time_budget(config, model, stopped, train_data, valid_data, test_data)
    monkeypatch.setattr(LetterTrainer, "_train_batches", stopped_in_ninth_epoch)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(train_data, valid_data, saved=True, show_progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(letter_trainer, "plan_epochs", lambda *args, **kwargs: pytest.fail("planned again"))
    config, model, resumed, train_data, valid_data, test_data = _sasrec(
        tiny_dataset, **run, resume_from=stopped.last_model_file)
    resumed.resume_checkpoint(stopped.last_model_file)
    assert quick_start.apply_time_budget(config, model, resumed, train_data, valid_data, test_data) == 11
    rest = _record_rates(resumed)
    resumed.fit(train_data, valid_data, saved=True, show_progress=False)
    assert rest == rates[8 * batches:]


def _agree_worker(rank, port, out):
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    try:
        out[rank] = letter_trainer.agreed(10 + rank)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_take_rank_0_s_decision():
    out = torch.multiprocessing.get_context("spawn").Manager().dict()
    torch.multiprocessing.spawn(_agree_worker, args=(free_port(), out), nprocs=2, join=True)
    assert dict(out) == {0: 10, 1: 10}
    assert letter_trainer.agreed(7) == 7  # outside DDP, the value itself


def _sasrec(tiny_dataset, **overrides):
    name, cfg = tiny_dataset
    config, _, train_data, valid_data, test_data = quick_start.prepare(
        "SASRec", name, config_dict={**cfg, **SMALL_SASREC, "train_batch_size": 64, **overrides})
    model = quick_start.get_model_class("SASRec")(config, train_data.dataset)
    return config, model, build_trainer(config, model), train_data, valid_data, test_data


def test_the_plan_is_made_again_from_the_first_epoch_and_the_schedule_follows(tiny_dataset, monkeypatch, caplog):
    plans = iter([5, 2, 1])  # the probe says 5 epochs fit; the first measured epoch 1 + 2, the second 2 + 1

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
    with caplog.at_level("INFO"):
        assert quick_start.apply_time_budget(config, model, resumed, train_data, valid_data, test_data) == 3
    assert "a resumed run keeps its schedule (3 epochs)" in caplog.text


def test_a_run_s_epochs_are_cut_to_its_budget(tiny_dataset):
    name, cfg = tiny_dataset
    # 15 seconds, far below what 2,000 epochs take (~0.2 s each with validation here)
    result = quick_start.run("SASRec", name, config_dict={**cfg, **SMALL_SASREC, "epochs": 2000, "stopping_step": 2000,
                                                          "time_budget": 0.25})
    assert 1 <= result["epochs"] <= result["epochs_planned"] < 2000
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}


def test_a_run_that_completes_its_plan_is_not_reported_as_stopped(tiny_dataset, monkeypatch):
    checked = []
    keep = LetterTrainer._keep_to_deadline

    def recorded(self, epoch_idx, validates):
        checked.append(epoch_idx)
        return keep(self, epoch_idx, validates)

    monkeypatch.setattr(LetterTrainer, "_keep_to_deadline", recorded)
    # 2 epochs in all, whenever asked: the epochs left to plan (args[5]) count from the cap of 6
    monkeypatch.setattr(letter_trainer, "plan_epochs", lambda *args, **kwargs: args[5] - 4)
    name, cfg = tiny_dataset
    result = quick_start.run("SASRec", name, config_dict={**cfg, **SMALL_SASREC, "epochs": 6, "time_budget": 30})
    # the end of the plan ends the run before any deadline check of a third epoch
    assert checked == [0, 1] and result["epochs"] == result["epochs_planned"] == 2
    assert result["stopped_at_deadline"] is None


def test_time_budget_needs_a_trainer_that_can_plan(tiny_dataset):
    name, cfg = tiny_dataset
    with pytest.raises(ValueError, match="time_budget: Pop is trained by"):
        quick_start.run("Pop", name, config_dict={**cfg, "time_budget": 10})


def test_a_ddp_run_plans_with_every_rank(tiny_dataset, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    name, cfg = tiny_dataset
    result = quick_start.run("BPR", name, config_dict={**cfg, "embedding_size": 8, "nproc": 2, "port": free_port(),
                                                       "epochs": 3, "time_budget": 10})
    # every rank probed and shared its estimates, and both ran rank 0's plan (a rank with another plan would
    # wait at a collective its peer never reaches)
    assert result["epochs_planned"] == result["epochs"] == 3 and result["stopped_at_deadline"] is None
