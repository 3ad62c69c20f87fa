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
