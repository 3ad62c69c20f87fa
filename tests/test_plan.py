"""The run plan printed before a run (``recbole_letter.plan``) and the profiles that size a run
(``properties/profile/``)."""

from pathlib import Path

import pytest

from recbole_letter import benchmark, plan, quick_start

REPO = Path(__file__).resolve().parent.parent


def plan_lines(text):
    """The printed plan: its title, a line per stage, the total."""
    lines = text[text.index("Plan: "):].splitlines()
    end = next(i for i, line in enumerate(lines) if line.strip().startswith("total"))
    return lines[: end + 1]


def test_the_plan_names_every_stage_estimates_it_and_sees_the_cache(tiny_dataset, capsys):
    name, cfg = tiny_dataset
    cfg = {**cfg, **benchmark.QUICK_OVERRIDES, "show_plan": True, "train_batches_per_epoch": 2}
    quick_start.run("LETTER_TIGER", name, config_dict=cfg)
    first = plan_lines(capsys.readouterr().out)
    assert first[0].startswith(f"Plan: LETTER_TIGER on {name}")
    stages = [line.split("  ")[1].strip() for line in first[1:-1]]
    assert stages == ["text embeddings", "CF table (SASRec)", "tokenizer (RQ-VAE)", "training (LETTER_TIGER)",
                      "validation", "test"]
    assert all(line.endswith("to run") and "~" in line for line in first[1:-1])
    quick_start.run("LETTER_TIGER", name, config_dict=cfg)  # the same config: every tokenizer stage cached
    second = plan_lines(capsys.readouterr().out)
    assert [line.endswith("cached") for line in second[1:4]] == [True, True, True]
    assert all(line.endswith("to run") for line in second[4:-1])


def test_the_probe_leaves_the_run_as_it_would_have_been(tiny_dataset):
    name, cfg = tiny_dataset
    cfg = {**cfg, "hidden_size": 16, "inner_size": 32, "n_layers": 1}
    with_plan = quick_start.run("SASRec", name, config_dict={**cfg, "show_plan": True})
    without = quick_start.run("SASRec", name, config_dict={**cfg, "show_plan": False})
    assert with_plan["test_result"] == without["test_result"]
    assert with_plan["best_valid_result"] == without["best_valid_result"]


def test_time_steps_skips_the_warm_up_and_stops_at_its_budget():
    calls = []

    def step():
        calls.append(1)

    assert plan.time_steps(step, n_steps=100, steps=3) >= 0 and len(calls) == 4  # warm-up + 3 timed
    calls.clear()
    plan.time_steps(step, n_steps=2, steps=3)
    assert len(calls) == 2  # never more steps than the stage has
    calls.clear()
    plan.time_steps(step, n_steps=100, steps=50, max_seconds=0.0)
    assert len(calls) == 2  # the budget is spent after the first timed step


def names(files):
    return [Path(f).relative_to(REPO / "properties").as_posix() for f in files]


def test_the_embedded_dataset_selects_the_cpu_profile_and_the_paper_s_datasets_do_not():
    assert quick_start.chosen_profile("LETTER_TIGER", "ml-100k") == "cpu"
    assert quick_start.chosen_profile("LETTER_TIGER", "Beauty") is None
    assert quick_start.chosen_profile("LETTER_TIGER", "ml-100k", config_dict={"profile": "paper"}) == "paper"
    files = names(quick_start.property_files("TIGER", "ml-100k", "cpu"))
    assert files[-4:] == ["model/LETTER_TIGER.yaml", "model/TIGER.yaml", "profile/cpu/tokenizer.yaml",
                          "profile/cpu/LETTER_TIGER.yaml"]
    assert names(quick_start.property_files("SASRec", "ml-100k", "cpu"))[-1] == "model/SASRec.yaml"  # generators only
    assert names(quick_start.property_files("TIGER", "Beauty", "paper"))[-1] == "profile/paper/tokenizer.yaml"
    with pytest.raises(ValueError, match="profile='fast': unknown profile"):
        quick_start.property_files("TIGER", "ml-100k", "fast")


def test_the_cpu_profile_changes_sizes_not_the_protocol():
    cpu = quick_start.build_config("LETTER_TIGER", "ml-100k")
    paper = quick_start.build_config("LETTER_TIGER", "ml-100k", config_dict={"profile": "paper"})
    assert cpu["profile"] == "cpu" and paper["profile"] == "paper"
    assert cpu["d_model"] < paper["d_model"] and cpu["epochs"] < paper["epochs"]
    assert paper["tokenizer_encoder_layers"] == [2048, 1024, 512, 256, 128, 64]
    for key in ("eval_args", "MAX_ITEM_LIST_LENGTH", "metrics", "topk", "valid_metric", "user_inter_num_interval",
                "item_inter_num_interval", "rm_dup_inter", "beam_size", "tau"):
        assert cpu[key] == paper[key], key


def test_the_plan_of_pop_has_the_one_epoch_recbole_runs(tiny_dataset, capsys):
    name, cfg = tiny_dataset
    quick_start.run("Pop", name, config_dict={**cfg, "epochs": 200, "show_plan": True})
    training = next(line for line in plan_lines(capsys.readouterr().out) if "training (Pop)" in line)
    assert "<= 1 epochs x" in training


def test_the_plan_counts_the_same_interactions_for_sequential_and_general_models(tiny_dataset):
    name, cfg = tiny_dataset
    titles = []
    for model in ("SASRec", "Pop"):
        config, full_dataset, *_ = quick_start.prepare(model, name, config_dict=cfg)
        titles.append(plan.plan_title(config, full_dataset).split("(")[1])
    assert titles[0] == titles[1]  # users, items, interactions


def test_a_busy_cpu_gets_a_line_of_advice_only_with_several_threads():
    assert plan.busy_cpu_warning("cpu", threads=2, load=2.9, cores=2).startswith("note: the load average is 2.9")
    assert "OMP_NUM_THREADS=1" in plan.busy_cpu_warning("cpu", threads=2, load=2.9, cores=2)
    assert plan.busy_cpu_warning("cpu", threads=2, load=1.1, cores=2) is None  # only this process's own work
    assert plan.busy_cpu_warning("cpu", threads=1, load=5.0, cores=2) is None  # one thread only shares a core
    assert plan.busy_cpu_warning("cpu", threads=8, load=4.0, cores=16) is None  # cores to spare
    assert plan.busy_cpu_warning("cuda", threads=2, load=9.0, cores=2) is None
