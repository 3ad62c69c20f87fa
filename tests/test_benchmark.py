"""The paper-reproduction commands: resumable runs, table layout, sweep plot, and the main job end to end."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_letter import benchmark, quick_start

REPO = Path(__file__).resolve().parent.parent


def fake_run(calls):
    def run(model, dataset, config_files=None, config_dict=None, saved=True):
        calls.append((model, dict(config_dict)))
        score = 0.01 * len(calls)
        metrics = {m: score for m in benchmark.METRIC_ORDER}
        return {"model": model, "dataset": dataset, "test_result": metrics, "best_valid_result": metrics,
                "best_valid_score": score}

    return run


def test_table1_layout_paper_columns_and_resume(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(quick_start, "run", fake_run(calls))
    markdown = benchmark.table1("Beauty", out_dir=tmp_path, models=["MF", "SASRec"], overrides={"epochs": 3})
    assert [c[0] for c in calls] == ["MF", "SASRec"] and calls[0][1]["epochs"] == 3
    assert "paper recall@10" in markdown and "0.0588" in markdown  # SASRec's Beauty R@10 in the paper
    rows = json.loads((tmp_path / "table1-Beauty.json").read_text())
    assert [r["model"] for r in rows] == ["MF", "SASRec"]
    # a second call reuses both finished runs; changed settings rerun
    benchmark.table1("Beauty", out_dir=tmp_path, models=["MF", "SASRec"], overrides={"epochs": 3})
    assert len(calls) == 2
    benchmark.table1("Beauty", out_dir=tmp_path, models=["MF"], overrides={"epochs": 4})
    assert len(calls) == 3
    # --quick: token sizes on top of the shipped configs, kept apart from full runs
    benchmark.table1("Beauty", out_dir=tmp_path, models=["MF"], overrides={"epochs": 4}, quick=True)
    assert len(calls) == 4 and calls[-1][1] == {**benchmark.QUICK_OVERRIDES, "epochs": 4}
    assert (tmp_path / "runs" / "quick" / "Beauty" / "MF.json").is_file()


def test_ablation_variants_follow_table2(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(quick_start, "run", fake_run(calls))
    benchmark.ablation("Instruments", out_dir=tmp_path)
    assert [c[0] for c in calls] == ["TIGER"] + ["LETTER_TIGER"] * 4
    settings = [c[1] for c in calls]
    assert settings[1]["beta"] == 0.0 and settings[2]["alpha"] == 0.0
    assert [s["tau"] for s in settings] == [1.0, 1.0, 1.0, 1.0, benchmark.BEST_TAU]
    assert "0.1122" in (tmp_path / "ablation-Instruments.md").read_text()
    # the tau sweep's tau=0.7 and tau=1.0 are Table 2's (4) and (3): the same runs, not run again
    benchmark.sweep("Instruments", "tau", [0.7, 1.0], out_dir=tmp_path)
    assert len(calls) == 5


def test_sweep_writes_plot(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(quick_start, "run", fake_run(calls))
    markdown = benchmark.sweep("Beauty", "tau", [0.7, 1.0, 1.2], out_dir=tmp_path)
    # RecBole's exhaustive search visits every value once, in its own order; the table keeps the grid's
    assert sorted(c[1]["tau"] for c in calls) == [0.7, 1.0, 1.2]
    assert [line.split("|")[1].strip() for line in markdown.splitlines()[2:]] == ["tau=0.7", "tau=1.0", "tau=1.2"]
    png = tmp_path / "sweep-tau-Beauty.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    benchmark.sweep("Beauty", "tau", [0.7, 1.0, 1.2], out_dir=tmp_path)
    assert len(calls) == 3  # finished points are reused
    with pytest.raises(ValueError, match="unknown --param"):
        benchmark.sweep("Beauty", "nope", out_dir=tmp_path)


def test_tune_runs_recbole_hypertuning_on_a_params_file(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(quick_start, "run", fake_run(calls))
    params = tmp_path / "hyper.test"
    params.write_text("learning_rate choice [0.001,0.0005]\nhidden_size choice [32,64]\n")
    markdown = benchmark.tune("ml-100k", "SASRec", params, out_dir=tmp_path, overrides={"epochs": 2})
    grid = sorted((c[1]["learning_rate"], c[1]["hidden_size"]) for c in calls)
    assert grid == [(0.0005, 32), (0.0005, 64), (0.001, 32), (0.001, 64)]
    assert all(c[0] == "SASRec" and c[1]["epochs"] == 2 for c in calls)
    valid = [float(line.split("|")[2]) for line in markdown.splitlines()[2:]]
    assert len(valid) == 4 and valid == sorted(valid, reverse=True)  # best valid NDCG@10 first
    assert (tmp_path / "tune-SASRec-ml-100k.csv").is_file()
    with pytest.raises(FileNotFoundError, match="params_file"):
        benchmark.tune("ml-100k", "SASRec", tmp_path / "missing.test", out_dir=tmp_path)


def test_params_file_is_read_as_literals_never_evaluated(monkeypatch, tmp_path, capsys):
    # before: RecBole's HyperTuning._build_space_from_file eval()'d every choice value
    from recbole_letter.benchmark.tuning import read_params_file

    calls = []
    monkeypatch.setattr(quick_start, "run", fake_run(calls))
    params = tmp_path / "hyper.test"
    params.write_text("# a comment\n\ntau choice [0.7, 1.0]\nlearning_rate loguniform -8,0\n"
                      "alpha uniform 0,1\nbeta quniform 1,5,1\ntext_fields choice ['[title]','[title,brand]']\n")
    assert read_params_file(params) == {
        "choice": {"tau": [0.7, 1.0], "text_fields": ["[title]", "[title,brand]"]},
        "loguniform": {"learning_rate": [-8.0, 0.0]}, "uniform": {"alpha": [0.0, 1.0]},
        "quniform": {"beta": [1.0, 5.0, 1.0]}}
    marker = tmp_path / "PWNED"
    payload = f"x choice [__import__('os').system('touch {marker}')]"
    for text, message in ((payload + "\n", "hyper.test:1: x choice: .* is not a literal"),
                          ("tau choice [0.7]\nlr uniform 1\n", "hyper.test:2: lr uniform: expected 2 numbers low,high"),
                          ("tau choice []\n", "hyper.test:1: tau choice: expected a non-empty list"),
                          ("tau normal 0,1\n", "hyper.test:1: unknown type 'normal'"),
                          ("tau choice\n", "hyper.test:1: expected 'name type values'"),
                          ("tau choice [1]\ntau choice [2]\n", "hyper.test:2: tau is given twice")):
        params.write_text(text)
        with pytest.raises(ValueError, match=message):
            benchmark.tune("ml-100k", "SASRec", params, out_dir=tmp_path)
    params.write_text(payload + "\n")
    argv = ["--benchmark=tune", "--model=BPR", "--dataset=ml-100k", f"--params_file={params}",
            f"--results_dir={tmp_path}"]
    assert run_recbole_letter_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {params}:1: x choice")
    assert not marker.exists() and calls == []


def load_file(path, name):
    """The Python file ``path`` (a script of this repository) imported as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recbole_letter_main(argv):
    return load_file(REPO / "run_recbole_letter.py", "run_recbole_letter").main(argv)


def test_tune_command_trains_every_trial(tiny_data_path, tmp_path, monkeypatch):
    run_recbole_letter = load_file(REPO / "run_recbole_letter.py", "run_recbole_letter")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hyper.test").write_text("learning_rate choice [0.01,0.001]\n")
    argv = ["--benchmark=tune", "--model=BPR", "--dataset=ml-tiny", "--params_file=hyper.test",
            f"--data_path={tiny_data_path}", "--epochs=1", "--embedding_size=8", "--show_progress=False",
            "--state=WARNING", "--results_dir=out"]
    assert run_recbole_letter.main(argv) == 0
    rows = json.loads((tmp_path / "out" / "tune-BPR-ml-tiny.json").read_text())
    assert sorted(r["model"] for r in rows) == ["BPR", "BPR"] and all("test_result" in r for r in rows)
    assert run_recbole_letter.main(["--benchmark=tune", "--dataset=ml-tiny"]) == 2  # no model, no file


def test_letter_tiger_end_to_end_and_tokenize_only(tiny_dataset, tmp_path):
    """The main job's path on the tiny slice: text + CF embeddings -> tokenizer -> T5 -> beam search."""
    name, cfg = tiny_dataset
    cfg = {**cfg, **benchmark.QUICK_OVERRIDES, "state": "WARNING", "train_batches_per_epoch": 2}
    result = quick_start.run("LETTER_TIGER", name, config_dict=cfg)
    assert set(result["test_result"]) == set(benchmark.METRIC_ORDER)
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_letter.py"), "--model=LETTER_TIGER", f"--dataset={name}",
         "--tokenize_only=True"] + [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in cfg.items()
                                    if k not in ("load_col", "text_fields")]
        + ["--text_fields=['movie_title']", "--load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id', 'movie_title']}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "collision rate" in proc.stdout
    report_path = [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("report JSON")][0]
    report = json.loads(Path(report_path.strip()).read_text())
    for key in ("n_items", "collision_rate_before", "collision_rate_after", "codes_used_per_level", "entropy_per_level"):
        assert key in report
    assert report["collision_rate_after"] == 0.0


def scratch_env(tmp_path):
    """The environment of a benchmark's process with ``$TMPDIR`` an empty folder of the test's own, where the
    script's scratch folder goes (``benchmark.scratch_dir``; torch may add its own compile cache there)."""
    (tmp_path / "scratch").mkdir()
    return {**os.environ, "TMPDIR": str(tmp_path / "scratch")}


def test_decoding_benchmark_agrees_with_generate_from_a_relative_data_path(tiny_data_path, tmp_path):
    """benchmarks/decoding.py on the tiny slice (random unique codes), its --data_path given relative to
    where the command runs (the script moves to a scratch folder afterwards, and removes it at exit)."""
    data_link = tmp_path / "data"
    data_link.symlink_to(tiny_data_path, target_is_directory=True)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "decoding.py"), "--dataset=ml-tiny", "--data_path=data",
         "--users=2", "--release_batch=1,2", "--rounds=2", "--threads=1", "--full_eval", "--full_eval_nproc=2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=scratch_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    left = sorted(p.name for p in (tmp_path / "scratch").glob("decoding_bench_*"))
    assert not left, f"its scratch folder is left behind: {left}"
    lines = proc.stdout.splitlines()
    assert "top-20 lists: 2/2 identical" in proc.stdout
    assert any(line.startswith("full test evaluation: ") and " users, 2 processes (" in line for line in lines)
    assert sum(line.startswith("release: 2 users") for line in lines) == 2
    assert any(line.startswith("multiply-adds per user: ours ") for line in lines)
    assert any(line.startswith("float32 matmul peak: ") for line in lines)
    assert lines[-1].startswith("speedup: ") and float(lines[-1].split()[1]) > 0


def test_decoding_profile_prints_the_profile_and_the_matmul_rates(tiny_data_path, tmp_path):
    """benchmarks/decoding_profile.py on the tiny slice (random unique codes)."""
    from test_tiger import write_random_index

    index = write_random_index(tiny_data_path, "ml-tiny", tmp_path / "tiny.index.json")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "decoding_profile.py"), "--dataset=ml-tiny",
         f"--data_path={tiny_data_path}", f"--codes={index}", "--users=8", "--threads=1", "--rows=5"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=scratch_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    left = sorted(p.name for p in (tmp_path / "scratch").glob("decoding_profile_*"))
    assert not left, f"its scratch folder is left behind: {left}"
    assert "users/s without the profiler" in proc.stdout and "aten::mm" in proc.stdout
    rates = [line for line in proc.stdout.splitlines() if " alone: " in line and "after a cache flush" in line]
    assert len(rates) == 4
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("wall time by stage"))
    wall = float(lines[start].split(": ")[1].split()[0])
    stages = {line.split(": ")[0].strip(): float(line.split(": ")[1].split()[0])
              for line in lines[start + 1:start + 8]}
    assert len(stages) == 7 and all(seconds >= 0 for seconds in stages.values()), stages
    # nested stages within their callers, callers within the pass (the printed figures are rounded to 1 ms)
    encoder = stages["encoder (encode_by_length)"]
    set_up = stages["decoder set-up (encoder + cross-attention keys/values)"]
    steps, search = stages["decoder steps"], stages["beam search (steps included)"]
    assert 0 < encoder <= set_up + 0.001 and 0 < steps <= search + 0.001 and set_up + search <= wall + 0.002
    nested = stages["of which self-attention (_attend)"] + stages["of which cache reorder (_follow_beams)"]
    assert nested <= steps + 0.002
    assert 0 < stages["projections (F.linear, across the stages)"] <= wall + 0.001
    assert " GMAC/s" in lines[start + 8]


def test_decoding_pools_are_the_first_users_or_distinct_users_spread_over_the_split(monkeypatch):
    """decoding.py's test_histories: ``first`` takes the split's first users, ``spread`` distinct users from
    its whole length (first and last included), both in the split's order; a pool as large as the split is all
    of it; another pool name is an error."""
    from types import SimpleNamespace

    import torch

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repository first
    decoding = load_file(REPO / "benchmarks" / "decoding.py", "decoding_pools")
    model = SimpleNamespace(ITEM_SEQ="item_seq", ITEM_SEQ_LEN="item_seq_len")
    users = torch.arange(23)  # batches of 5 users: a user's history is its number, its length number % 4 + 1
    test_data = [({"item_seq": rows[:, None].repeat(1, 3), "item_seq_len": rows % 4 + 1},) for rows in users.split(5)]
    seq, lens = decoding.test_histories(model, test_data, 7, "first")
    assert seq[:, 0].tolist() == list(range(7)) and torch.equal(lens, seq[:, 0] % 4 + 1)
    seq, lens = decoding.test_histories(model, test_data, 7, "spread")
    picked = seq[:, 0].tolist()
    assert picked[0] == 0 and picked[-1] == 22 and picked == sorted(set(picked)) and len(picked) == 7
    assert torch.equal(lens, seq[:, 0] % 4 + 1)
    for n in (22, 23, 30):
        assert len(set(decoding.test_histories(model, test_data, n, "spread")[0][:, 0].tolist())) == min(n, 23)
    with pytest.raises(ValueError, match="pool"):
        decoding.test_histories(model, test_data, 7, "last")


def test_decoder_ab_times_a_commit_s_decoding_against_this_checkout_s(tiny_data_path, tmp_path, monkeypatch, capsys):
    """benchmarks/decoder_ab.py against HEAD on the tiny slice (random unique codes): the same lists on both sides,
    and the classes it swaps methods on are as they were after it."""
    from test_tiger import write_random_index

    from recbole_letter.model import t5_cpu
    from recbole_letter.model.letter_tiger import LETTER_TIGER

    before = {name: LETTER_TIGER.__dict__.get(name) for name in ("build_step_fn", "generate_items")}
    activation = t5_cpu.FeedForward._activation
    index = write_random_index(tiny_data_path, "ml-tiny", tmp_path / "tiny.index.json")
    for extra in ([], ["--decoder_only", "--pool=first"]):
        lines = run_script("decoder_ab.py", ["--base=HEAD", "--dataset=ml-tiny", f"--data_path={tiny_data_path}",
                                             f"--codes={index}", "--users=4", "--rounds=2", "--threads=1", *extra],
                           monkeypatch, capsys)
        assert any(line.startswith("lists identical") for line in lines), lines
        assert lines[-1].startswith("speedup: ") and float(lines[-1].split()[1]) > 0
        assert {name: LETTER_TIGER.__dict__.get(name) for name in before} == before
        assert t5_cpu.FeedForward._activation is activation


def test_the_scripts_run_in_process_start_in_a_fresh_interpreter_from_any_folder(tmp_path):
    """What ``run_script`` skips for split_gap.py and seen_items.py, which test_checkpoint_scripts_agree_... runs
    in-process: each one's own ``sys.path`` line and imports (all at the top), in a fresh interpreter started
    outside the repository (``--help``: after the imports, before any work). Both start at once: a fresh
    interpreter spends seconds importing torch and recbole."""
    options = {"split_gap.py": "--checkpoint", "seen_items.py": "--checkpoint"}
    procs = {name: subprocess.Popen([sys.executable, str(REPO / "benchmarks" / name), "--help"], cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in options}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
        assert options[name] in out, name


def run_script(name, args, monkeypatch, capsys):
    """``python benchmarks/<name> <args>`` in this process (``runpy``, as ``__main__``): the script's own code,
    without the ~7 s of a fresh interpreter importing torch and recbole. Its stdout's lines."""
    import runpy

    import torch

    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / name), *args])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts its own folder first
    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        runpy.run_path(str(REPO / "benchmarks" / name), run_name="__main__")
    finally:
        torch.set_num_threads(threads)  # the script's --threads
    return capsys.readouterr().out.splitlines()


def test_train_loop_benchmark_runs_both_loops_to_the_same_weights(tiny_data_path, tmp_path):
    """benchmarks/train_loop.py on the tiny slice: RecBole's epoch loop and ours, same batches and state
    (8 length buckets, the CPU default: ours runs 8 backward passes per batch)."""
    from test_tiger import write_random_index

    index = write_random_index(tiny_data_path, "ml-tiny", tmp_path / "tiny.index.json")
    proc = subprocess.run(  # a fresh interpreter: the script imports recbole's Trainer itself, in main()
        [sys.executable, str(REPO / "benchmarks" / "train_loop.py"), "--dataset=ml-tiny",
         f"--data_path={tiny_data_path}", f"--item_codes_file={index}", "--d_model=16", "--d_ff=32",
         "--num_heads=2", "--d_kv=8", "--num_encoder_layers=1", "--num_decoder_layers=1",
         "--train_batch_size=64", "--batches=3", "--rounds=2",
         "--threads=1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    losses = next(line for line in lines if line.startswith("epoch loss"))
    recbole, ours = losses.split("recbole ")[1].split(", ours ")
    # the same steps; ours runs a backward pass per length bucket: the same gradients up to the order their
    # float32 sums run in. Bounds of that (as in test_tiger's trainer test; the tiny T5's longest reduction
    # 50, chain 24, twice for gradients): per step Adam's update (lr 5e-4 (LETTER_TIGER.yaml), times a
    # normalised gradient of size <= ~1) by lr times a gradient's relative float32 error, plus the weight's
    # own rounding, eps32 |w| with |w| < 5 (the N(0, 1) embedding's 800 entries: initializer_factor 1)
    from numerics import EPS32, float32_tolerance

    n, lr = 3, 5e-4
    loss = float(recbole)
    assert loss > 0 and abs(loss - float(ours.split(";")[0])) <= float32_tolerance(loss, 50, n * 24)
    assert float(losses.split("max |weight diff| ")[1]) <= n * (lr * float32_tolerance(1.0, 50, 48) + EPS32 * 5.0)
    assert sum(line.startswith("round ") for line in lines) == 4
    assert lines[-1].startswith("speedup: ") and float(lines[-1].split()[1]) > 0


@pytest.mark.parametrize("exclude_seen_items", [False, True])
def test_checkpoint_scripts_agree_with_the_runs_own_evaluation(tiny_data_path, tmp_path, exclude_seen_items,
                                                               monkeypatch, capsys):
    """benchmarks/split_gap.py and benchmarks/seen_items.py on a tiny LETTER_TIGER checkpoint: their valid and
    test Recall@10 / NDCG@10 are the run's own (RecBole's evaluation of the same weights, seen items ranked or
    kept out of the beam as the run did), and split_gap's groups by training count hold every user once."""
    from test_tiger import _tiny_tiger_config

    config_dict = {**_tiny_tiger_config(tiny_data_path, tmp_path), "epochs": 2, "state": "WARNING",
                   "exclude_seen_items": exclude_seen_items}
    result = quick_start.run("LETTER_TIGER", "ml-tiny", config_dict=config_dict)
    valid, test = result["best_valid_result"], result["test_result"]
    assert test["recall@10"] > 0  # a comparison with hits in it

    def script(name):
        return run_script(name, [f"--checkpoint={result['checkpoint']}", "--threads=1"], monkeypatch, capsys)

    def close(printed, value):  # both rounded to 4 decimals, one by round(), one by format()
        return abs(float(printed) - value) <= 1.01e-4

    lines = script("split_gap.py")
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["train"], ["valid"], ["test"])}
    assert set(rows) == {"train", "valid", "test"} and int(rows["train"][1]) == 150  # a row per user
    for split, metrics in (("valid", valid), ("test", test)):
        users, recall, ndcg = int(rows[split][1]), rows[split][2], rows[split][3]
        assert users == 150 and close(recall, metrics["recall@10"]) and close(ndcg, metrics["ndcg@10"])
    groups = lines[lines.index(next(line for line in lines if line.startswith("count"))) + 1:]
    assert len(groups) == 6
    for column in range(3):  # each split's shares of users add up to 1
        shares = [float(line[9:].split()[3 * column]) for line in groups]
        assert abs(sum(shares) - 1) < 4e-3  # 6 shares rounded to 3 decimals
    rule = "exclude_seen_items" if exclude_seen_items else "seen items ranked"
    ranked = next(line for line in script("seen_items.py") if line.startswith(rule))
    assert close(ranked.split()[-2], test["recall@10"]) and close(ranked.split()[-1], test["ndcg@10"])
