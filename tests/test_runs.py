"""Runs never share a file, nothing unsafe is loaded, every write is atomic (issue 24)."""

import json
import multiprocessing
import os
import pickle
import shutil
import threading

import numpy as np
import pytest
import torch

import run_recbole_letter
from recbole_letter import benchmark, config_check, quick_start
from recbole_letter.config_check import ConfigError
from recbole_letter.tokenizer import cache
from recbole_letter.trainer import CHECKPOINT_FORMAT, LetterTrainer, load_checkpoint

FAST_BPR = {"embedding_size": 8}  # a LetterTrainer run of ~1 s on the 150-user slice


def _same_second(monkeypatch):
    """Every run id and log name made from now on reads the same second."""
    import recbole.utils.logger

    import recbole_letter.trainer

    class FrozenClock:
        def __getattr__(self, name):
            import time

            return getattr(time, name)

        @staticmethod
        def strftime(fmt, *args):
            return "20250101-120000"

    monkeypatch.setattr(recbole_letter.trainer, "time", FrozenClock())
    monkeypatch.setattr(recbole.utils.logger, "get_local_time", lambda: "Jan-01-2025_12-00-00")


def test_runs_in_the_same_second_get_their_own_files_and_rows(tiny_dataset, monkeypatch):
    # before: both runs wrote saved/BPR-<second>.pth; the first then tested the second's weights
    _same_second(monkeypatch)
    name, cfg = tiny_dataset
    first = quick_start.run("BPR", name, config_dict={**cfg, **FAST_BPR, "seed": 1, "epochs": 2})
    second = quick_start.run("BPR", name, config_dict={**cfg, **FAST_BPR, "seed": 2, "epochs": 2})
    assert first["run_id"] != second["run_id"] and first["run_id"].startswith("BPR-ml-tiny-20250101-120000-")
    assert first["checkpoint"] != second["checkpoint"]
    assert first["checkpoint"] == os.path.join("saved", first["run_id"] + ".pth")
    assert first["test_result"] != second["test_result"]  # different seeds: each file holds its own run
    for result in (first, second):
        again = quick_start.evaluate_checkpoint(result["checkpoint"])
        assert again["run_id"] == result["run_id"] and again["test_result"] == result["test_result"]
        # every file this package writes loads as tensors and plain values
        for path in (result["checkpoint"], result["checkpoint"].replace(".pth", "-last.pth")):
            checkpoint = torch.load(path, weights_only=True)
            assert checkpoint["run_id"] == result["run_id"] and checkpoint["config"]["seed"] in (1, 2)
    assert first["config_digest"] != second["config_digest"]  # the seeds differ
    # the results file keeps both rows (it kept only the last writer's)
    benchmark.write_results([first], "results", name)
    benchmark.write_results([second], "results", name)
    rows = benchmark.read_rows(f"results/{name}.jsonl")
    assert [row["run_id"] for row in rows] == [first["run_id"], second["run_id"]]
    table = open(f"results/{name}.md").read()
    assert first["run_id"] in table and second["run_id"] in table
    assert len(json.load(open(f"results/{name}.json"))) == 2


def _append_rows(out_dir, writer, n_rows):
    for i in range(n_rows):
        result = {"run_id": f"run-{writer}-{i}", "model": "BPR", "dataset": "toy", "epochs": 1,
                  "best_valid_result": {"ndcg@10": 0.1}, "test_result": {"ndcg@10": 0.2}}
        benchmark.write_results([result], out_dir, "toy")


def test_concurrent_writers_keep_every_results_row(tmp_path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_rows, args=(str(tmp_path), w, 5)) for w in range(6)]
    for p in writers:
        p.start()
    for p in writers:
        p.join()
    assert all(p.exitcode == 0 for p in writers)
    expected = {f"run-{w}-{i}" for w in range(6) for i in range(5)}
    assert {row["run_id"] for row in benchmark.read_rows(tmp_path / "toy.jsonl")} == expected
    # the tables were rewritten from every row by the last writer
    assert len((tmp_path / "toy.csv").read_text().strip().splitlines()) == 1 + len(expected)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


N_VALUES = 200_000  # ~1.6 MB per file: a write takes long enough for writers to overlap


def _save_many(path, writer, n_writes):
    for i in range(n_writes):
        cache.save_arrays(path, values=np.full(N_VALUES, writer * 1000 + i, dtype=np.int64))


def test_concurrent_save_arrays_never_fail_and_leave_a_whole_file(tmp_path):
    # before: every writer used <path>.tmp.npz; 16 of 80 concurrent writes failed
    path = str(tmp_path / "emb.npz")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_save_many, args=(path, w, 10)) for w in range(8)]
    errors = []
    threads = [threading.Thread(target=lambda w=w: _guarded(errors, _save_many, path, 100 + w, 10)) for w in range(3)]
    for worker in writers + threads:
        worker.start()
    seen = 0
    while any(p.is_alive() for p in writers):  # a reader meanwhile: a whole file from one writer, or none yet
        if os.path.exists(path):
            with np.load(path) as f:
                values = f["values"]
            assert values.shape == (N_VALUES,) and (values == values[0]).all()
            seen += 1
    for worker in writers + threads:
        worker.join()
    assert all(p.exitcode == 0 for p in writers) and errors == []
    arrays = cache.load_arrays(path)  # the last writer's file, with its own checksum beside it
    assert arrays is not None and (arrays["values"] == arrays["values"][0]).all()
    assert seen > 0 and not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def _guarded(errors, fn, *args):
    try:
        fn(*args)
    except Exception as error:  # noqa: BLE001  (reported by the test)
        errors.append(error)


class WritesAFile:
    """Unpickling this object would create ``path`` (what a malicious checkpoint could do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickled_file_is_refused_and_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "config": WritesAFile(str(marker))}, path)
    with pytest.raises(ValueError, match="holds pickled Python objects, which are never loaded here"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="evil.pth holds pickled"):
        quick_start.evaluate_checkpoint(str(path))
    assert run_recbole_letter.main([f"--checkpoint={path}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path} holds pickled Python objects")
    assert not marker.exists()
    # plain data without this package's format mark, and a file that is no checkpoint at all
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not a recbole_letter checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "text.pth")


def test_resume_checks_its_inputs_before_training(tiny_dataset, tmp_path, monkeypatch):
    name, cfg = tiny_dataset
    cfg = {**cfg, **FAST_BPR, "epochs": 2}
    whole = quick_start.run("BPR", name, config_dict=cfg)  # leaves the state after epoch 0 in -last.pth
    last = whole["checkpoint"].replace(".pth", "-last.pth")

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    with monkeypatch.context() as patched:
        patched.setattr(LetterTrainer, "_train_epoch", no_training)
        moved = tmp_path / "elsewhere.pth"
        shutil.move(whole["checkpoint"], moved)  # before: this failed only after training, at the test
        with pytest.raises(ValueError, match=r"whose best checkpoint saved/BPR-.*\.pth does not exist"):
            quick_start.run("BPR", name, config_dict={**cfg, "resume_from": last})
        shutil.move(moved, whole["checkpoint"])
        with pytest.raises(ValueError, match=r"another config: learning_rate: 0\.001 there, 0\.01 here"):
            quick_start.run("BPR", name, config_dict={**cfg, "learning_rate": 0.01, "resume_from": last})
        with pytest.raises(ValueError, match="belongs to model 'BPR', not 'NeuMF'"):
            quick_start.run("NeuMF", name, config_dict={**cfg, "resume_from": last})
    resumed = quick_start.run("BPR", name, config_dict={**cfg, "resume_from": last})
    assert resumed["run_id"] == whole["run_id"] and resumed["test_result"] == whole["test_result"]


@pytest.mark.parametrize("model", ["Pop", "ItemKNN"])
def test_non_neural_baselines_save_and_test(model, tiny_dataset, capsys):
    # before: RecBole's TraditionalTrainer pickled its Config, then its own evaluate refused the file
    name, cfg = tiny_dataset
    result = quick_start.run(model, name, config_dict=cfg, saved=True)
    assert 0.0 < result["test_result"]["recall@10"] <= 1.0
    assert torch.load(result["checkpoint"], weights_only=True)["run_id"] == result["run_id"]
    assert quick_start.evaluate_checkpoint(result["checkpoint"])["test_result"] == result["test_result"]
    if model == "Pop":  # and from the command line, which prints the run id it evaluates
        assert run_recbole_letter.main([f"--checkpoint={result['checkpoint']}"]) == 0
        assert f"(run {result['run_id']}, evaluated from {result['checkpoint']})" in capsys.readouterr().out


def test_saved_dataset_and_dataloader_files_are_never_unpickled(tiny_dataset, tmp_path):
    # before: RecBole's create_dataset / data_preparation ran pickle.load on these files whenever they existed
    name, cfg = tiny_dataset
    os.makedirs("saved", exist_ok=True)
    markers = []
    for file in (f"saved/{name}-Dataset.pth", f"saved/{name}-for-BPR-dataloader.pth", str(tmp_path / "given.pth")):
        markers.append(tmp_path / f"PWNED-{len(markers)}")
        with open(file, "wb") as f:
            pickle.dump(WritesAFile(str(markers[-1])), f)
    config, dataset, train_data, _, _ = quick_start.prepare("BPR", name, config_dict=cfg)
    assert dataset.inter_num > 0 and len(train_data) > 0
    assert not any(marker.exists() for marker in markers)
    # the keys that name or write such files are refused, from a user and from a checkpoint's stored config
    for key, value in (("dataset_save_path", str(tmp_path / "given.pth")), ("dataloaders_save_path", "x.pth"),
                       ("save_dataset", True), ("save_dataloaders", True)):
        with pytest.raises(ConfigError, match=f"{key}=.*not supported: RecBole would unpickle"):
            quick_start.prepare("BPR", name, config_dict={**cfg, key: value})
    assert config_check.check_value("save_dataset", False) is False  # RecBole's default stays accepted
    forged = tmp_path / "forged.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "run_id": "r", "epoch": 0, "state_dict": {},
                "config": {"model": "BPR", "dataset": name, "dataset_save_path": str(tmp_path / "given.pth")}}, forged)
    with pytest.raises(ConfigError, match="forged.pth: stored config: dataset_save_path=.*not supported"):
        quick_start.evaluate_checkpoint(str(forged))
    assert not any(marker.exists() for marker in markers)


def test_a_torn_results_line_keeps_the_next_row(tmp_path):
    # before: the next run's row was appended to the torn line and both were skipped as one bad line
    _append_rows(str(tmp_path), 0, 1)
    with open(tmp_path / "toy.jsonl", "a") as f:
        f.write('{"run_id": "torn", "mod')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="toy.jsonl:2: not a JSON row"):
        _append_rows(str(tmp_path), 1, 1)
        rows = benchmark.read_rows(tmp_path / "toy.jsonl")
    assert [row["run_id"] for row in rows] == ["run-0-0", "run-1-0"]
    assert "run-1-0" in (tmp_path / "toy.md").read_text()


def test_checkpoint_records_its_data_and_refuses_other_data(tiny_dataset, tmp_path, monkeypatch):
    # before: --checkpoint and --resume_from ran on whatever data the path held, unchecked
    name, cfg = tiny_dataset
    cfg = {**cfg, **FAST_BPR, "epochs": 2}
    result = quick_start.run("BPR", name, config_dict=cfg)
    data = load_checkpoint(result["checkpoint"])["data"]
    assert data["interactions"] > 0 and data["users"] > 0 and len(data["sha256"][f"{name}.inter"]) == 64
    moved = tmp_path / "moved"
    shutil.copytree(os.path.join(cfg["data_path"], name), moved / name)
    # the same content elsewhere is the same data
    again = quick_start.evaluate_checkpoint(result["checkpoint"], {"data_path": str(moved)})
    assert again["test_result"] == result["test_result"]
    inter = moved / name / f"{name}.inter"
    lines = inter.read_text().splitlines()
    first = lines[1].split("\t")
    inter.write_text("\n".join([lines[0], "\t".join(first[:-1] + [str(float(first[-1]) + 1)])] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=rf"was trained on other data: {name}\.inter sha256 \w+ there, \w+ here"):
        quick_start.evaluate_checkpoint(result["checkpoint"], {"data_path": str(moved)})
    inter.write_text("\n".join(lines[:-1]) + "\n")  # one interaction fewer
    with pytest.raises(ValueError, match=r"other data: interactions \d+ there, \d+ here"):
        quick_start.evaluate_checkpoint(result["checkpoint"], {"data_path": str(moved)})
    # --checkpoint checks the rows as training does (was: a short row was filled in silently)
    inter.write_text("\n".join(lines[:2] + ["\t".join(first[:2])] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=rf"{name}\.inter:3: expected \d fields, got 2"):
        quick_start.evaluate_checkpoint(result["checkpoint"], {"data_path": str(moved)})
    inter.write_text("\n".join(lines[:-1]) + "\n")
    last = result["checkpoint"].replace(".pth", "-last.pth")
    monkeypatch.setattr(LetterTrainer, "_train_epoch", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match="was trained on other data: interactions"):
        quick_start.run("BPR", name, config_dict={**cfg, "data_path": str(moved), "resume_from": last})


def test_resume_compares_codes_files_by_content(tiny_dataset, tmp_path, monkeypatch):
    # before: RUN_PLACEMENT_KEYS left item_codes_file in the compared config: a moved codes file was refused,
    # while the README said it may point elsewhere
    name, cfg = tiny_dataset
    codes = tmp_path / "a" / "codes.index.json"
    codes.parent.mkdir()
    codes.write_text('{"1": ["<a_1>"]}')  # BPR does not read it: the file only has to be recorded
    cfg = {**cfg, **FAST_BPR, "epochs": 2, "item_codes_file": str(codes)}
    whole = quick_start.run("BPR", name, config_dict=cfg)
    last = whole["checkpoint"].replace(".pth", "-last.pth")
    assert len(load_checkpoint(last)["files"]["item_codes_file"]) == 64
    moved = tmp_path / "b" / "moved.index.json"
    moved.parent.mkdir()
    moved.write_text(codes.read_text())
    resumed = quick_start.run("BPR", name, config_dict={**cfg, "item_codes_file": str(moved), "resume_from": last})
    assert resumed["run_id"] == whole["run_id"] and resumed["test_result"] == whole["test_result"]
    moved.write_text('{"1": ["<a_2>"]}')
    with pytest.raises(ValueError, match=r"another config: item_codes_file: .* \(content sha256 \w{12} there, \w{12} "
                                         r"here\)"):
        quick_start.run("BPR", name, config_dict={**cfg, "item_codes_file": str(moved), "resume_from": last})


def test_resume_file_is_checked_before_the_data_loads(tiny_dataset, tmp_path, monkeypatch):
    # before: --resume_from was checked only after data loading and the tokenizer stage (which may take hours)
    name, cfg = tiny_dataset
    cfg = {**cfg, **FAST_BPR, "epochs": 2}
    whole = quick_start.run("BPR", name, config_dict=cfg)
    last = whole["checkpoint"].replace(".pth", "-last.pth")
    monkeypatch.setattr(quick_start, "load_data", lambda config: pytest.fail("the data loaded first"))
    for overrides, message in (({"learning_rate": 0.01}, r"another config: learning_rate: 0\.001 there, 0\.01 here"),
                               ({"resume_from": whole["checkpoint"]}, "is not a '-last.pth' file"),
                               ({"resume_from": str(tmp_path / "none.pth")}, "does not exist")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            quick_start.run("BPR", name, config_dict={**cfg, "resume_from": last, **overrides})
    with pytest.raises(ValueError, match="belongs to model 'BPR', not 'NeuMF'"):
        quick_start.run("NeuMF", name, config_dict={**cfg, "resume_from": last})
    with pytest.raises(ValueError, match="resume_from: Pop is trained by TraditionalTrainer, which cannot resume"):
        quick_start.run("Pop", name, config_dict={**cfg, "resume_from": last})
    os.remove(whole["checkpoint"])
    with pytest.raises(ValueError, match="whose best checkpoint .* does not exist"):
        quick_start.run("BPR", name, config_dict={**cfg, "resume_from": last})


def test_early_resume_check_ignores_keys_the_data_loading_sets(tmp_path):
    # RecBole's data transforms (BERT4Rec's mask) add config keys while the data loads: not there yet early
    from recbole_letter.trainer import CHECKPOINT_FORMAT, check_resume_file

    config = {"model": "BERT4Rec", "dataset": "d", "learning_rate": 0.001, "item_codes_file": None,
              "cf_emb_file": None}
    path = tmp_path / "run-last.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "run_id": "r", "best_model_file": "x.pth", "best_valid_score": -float("inf"),
                "state_dict": {}, "config": {**config, "MASK_INDEX": "MASK_INDEX"}}, path)

    class Values(dict):
        final_config_dict = property(lambda self: self)

    check_resume_file(Values(config), path, before_data=True)
    with pytest.raises(ValueError, match="another config: MASK_INDEX: 'MASK_INDEX' there, None here"):
        check_resume_file(Values(config), path)


def test_run_files_from_before_a_key_existed_resume_with_its_value_then(tmp_path):
    # item_codes_collisions came later: a run file without it gave a codes file's shared codes an extra level
    from recbole_letter.trainer import CHECKPOINT_FORMAT, check_resume_file

    class Values(dict):
        final_config_dict = property(lambda self: self)

    path = tmp_path / "run-last.pth"
    for codes_file in (None, "codes.index.json"):
        stored = {"model": "LETTER_TIGER", "dataset": "d", "item_codes_file": codes_file, "cf_emb_file": None}
        torch.save({"format": CHECKPOINT_FORMAT, "run_id": "r", "best_model_file": "x.pth",
                    "best_valid_score": -float("inf"), "state_dict": {}, "config": stored}, path)
        config = {**stored, "item_codes_collisions": "free_last_code"}
        if codes_file is None:  # no codes file: the key changes nothing
            check_resume_file(Values(config), path)
            continue
        with pytest.raises(ValueError, match="item_codes_collisions: 'extra_level' there, 'free_last_code' here"):
            check_resume_file(Values(config), path)
        check_resume_file(Values({**config, "item_codes_collisions": "extra_level"}), path)


def test_run_files_from_before_weight_decay_spared_norms_resume_decaying_every_parameter(tmp_path):
    # decay_norms_and_biases came later: a run file without it decayed every parameter, which matters only with
    # weight decay
    from recbole_letter.trainer import CHECKPOINT_FORMAT, check_resume_file

    class Values(dict):
        final_config_dict = property(lambda self: self)

    path = tmp_path / "run-last.pth"
    for weight_decay in (0.0, 0.01):
        stored = {"model": "LETTER_TIGER", "dataset": "d", "item_codes_file": None, "cf_emb_file": None,
                  "weight_decay": weight_decay}
        torch.save({"format": CHECKPOINT_FORMAT, "run_id": "r", "best_model_file": "x.pth",
                    "best_valid_score": -float("inf"), "state_dict": {}, "config": stored}, path)
        config = {**stored, "decay_norms_and_biases": False}
        if not weight_decay:
            check_resume_file(Values(config), path)
            continue
        with pytest.raises(ValueError, match=r"decay_norms_and_biases: True there, False here \(the run file is "
                                             r"older than the key"):
            check_resume_file(Values(config), path)
        check_resume_file(Values({**config, "decay_norms_and_biases": True}), path)


def test_a_checkpoint_with_the_mark_but_not_its_keys_is_refused(tmp_path):
    # before: load_checkpoint returned it, and the caller failed later with a KeyError
    for state, missing in (({"format": CHECKPOINT_FORMAT}, "run_id, config, state_dict"),
                           ({"format": CHECKPOINT_FORMAT, "run_id": "r", "config": [], "state_dict": {}}, "config")):
        torch.save(state, tmp_path / "part.pth")
        with pytest.raises(ValueError, match=f"has the recbole_letter format mark but lacks {missing} "):
            load_checkpoint(tmp_path / "part.pth")


def test_pretrained_checkpoints_are_named_by_the_run_id(tmp_path):
    # before: RecBole's <model>-<dataset>-<epoch>.pth, the same file for every run of S3Rec / RaCT on a dataset
    import logging
    import types

    from recbole_letter.trainer import SafeCheckpoints

    model = torch.nn.Linear(2, 2)
    model.other_parameter = lambda: None
    trainer = types.SimpleNamespace(
        checkpoint_dir=str(tmp_path), run_id="S3Rec-d-20250101-120000-abcdef", model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1), logger=logging.getLogger("test"),
        checkpoint_header=lambda: {"format": CHECKPOINT_FORMAT, "run_id": "S3Rec-d-20250101-120000-abcdef",
                                   "config": {}})
    SafeCheckpoints.save_pretrained_model(trainer, 4, str(tmp_path / "S3Rec-d-5.pth"))
    expected = tmp_path / "S3Rec-d-20250101-120000-abcdef-pretrain-5.pth"
    assert trainer.saved_model_file == str(expected) and not (tmp_path / "S3Rec-d-5.pth").exists()
    assert load_checkpoint(expected)["epoch"] == 4


def test_figures_are_written_atomically(tmp_path, monkeypatch):
    # before: savefig wrote the final path directly; a crash mid-write left half a PNG
    import matplotlib.figure

    from recbole_letter.tokenizer.report import write_plots

    report = {"collision_rate_before": 0.1, "collision_rate_after_sinkhorn": 0.05, "collision_rate_after": 0.0,
              "num_levels": 2, "codes_used_per_level": [4, 4], "entropy_per_level": [2.0, 2.0],
              "max_entropy_per_level": [2.0, 2.0], "level1_group_counts": [3, 1]}
    paths = write_plots(report, str(tmp_path))
    whole = {key: open(path, "rb").read() for key, path in paths.items()}
    real_savefig = matplotlib.figure.Figure.savefig

    def crash_midway(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        write_plots(report, str(tmp_path))
    metrics = {m: 0.1 for m in benchmark.METRIC_ORDER}
    monkeypatch.setattr(quick_start, "run", lambda model, dataset, *a, **k: {
        "model": model, "dataset": dataset, "test_result": metrics, "best_valid_result": metrics,
        "best_valid_score": 0.1})
    with pytest.raises(OSError, match="disk full"):
        benchmark.sweep("Beauty", "tau", [0.7], out_dir=tmp_path)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real_savefig)
    assert {key: open(path, "rb").read() for key, path in paths.items()} == whole
    assert not (tmp_path / "sweep-tau-Beauty.png").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
