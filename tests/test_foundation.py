"""The entry point, the property layering, the six baselines and bad-input errors."""

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FRESH_PROCESS_THREADS
from recbole_letter import common, quick_start
from recbole_letter.learning_curve import read_curve
from recbole_letter.quick_start import free_port
from recbole_letter.model import get_model_class
from recbole_letter.trainer import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
METRICS = {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
TINY_SEQ = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "embedding_size": 16}


def test_layering_order(tiny_dataset, tmp_path):
    name, cfg = tiny_dataset
    user_file = tmp_path / "user.yaml"
    user_file.write_text("stopping_step: 3\nlearning_rate: 0.5\n")
    config = quick_start.build_config("SASRec", name, [str(user_file)], {**cfg, "learning_rate": 0.25})
    assert config["MAX_ITEM_LIST_LENGTH"] == 20  # overall.yaml over RecBole's 50
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["order"] == "TO"
    assert config["train_neg_sample_args"]["distribution"] == "none"  # model/SASRec.yaml
    assert config["stopping_step"] == 3  # user file over overall.yaml
    assert config["learning_rate"] == 0.25  # command line over user file


@pytest.mark.parametrize("requested,native,settled,level", [
    ("auto", True, True, "INFO"), ("auto", False, False, "INFO"),  # auto: autocast only where it is native
    (True, False, True, "WARNING"),  # asked for on a device that emulates the dtype: kept, with a warning
    (True, True, True, None), (False, False, False, None),
    (1, True, True, None), (0, False, False, None),  # settled to bools: torch.autocast takes no int
])
def test_enable_amp_auto_autocasts_only_where_the_device_computes_the_dtype(
        tiny_dataset, monkeypatch, caplog, requested, native, settled, level):
    name, cfg = tiny_dataset
    asked = []
    monkeypatch.setattr(common, "native_autocast", lambda device, dtype: asked.append((device, dtype)) or native)
    config = quick_start.build_config("LETTER_TIGER", name, None, {**cfg, "enable_amp": requested, "state": "INFO"})
    assert config["enable_amp"] is settled  # what the trainer, the model's decoding and the plan read
    assert asked == ([(config["device"].type, torch.bfloat16)] if requested else [])
    caplog.set_level("INFO")
    quick_start._init_logger(config)
    notes = [r for r in caplog.records if r.getMessage().startswith("enable_amp:")]
    assert [r.levelname for r in notes] == ([level] if level else [])
    if requested == "auto":
        assert notes[0].getMessage().startswith(f"enable_amp: auto -> {settled}")


def test_native_autocast_follows_the_cpus_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}
    assert common.native_autocast("cpu", torch.bfloat16) == bool({"avx512_bf16", "amx_tile"} & flags)
    assert common.native_autocast("cpu", torch.float16) == ("amx_fp16" in flags)


def test_property_files_order():
    def names(model, dataset):
        return [Path(f).relative_to(REPO / "properties").as_posix() for f in quick_start.property_files(model, dataset)]

    assert names("LETTER_TIGER", "Beauty") == [
        "overall.yaml", "tokenizer.yaml", "dataset/Beauty.yaml", "model/LETTER_TIGER.yaml"]
    # a plain variant reads its LETTER model's file, then its own
    assert names("TIGER", "Beauty")[-2:] == ["model/LETTER_TIGER.yaml", "model/TIGER.yaml"]
    assert names("MF", "ml-100k") == ["overall.yaml", "dataset/ml-100k.yaml", "model/BPR.yaml"]


@pytest.mark.parametrize("model", ["MF", "Caser", "HGN", "BERT4Rec", "LightGCN", "SASRec"])
def test_baseline_trains_evaluates_and_reloads(model, tiny_dataset):
    name, cfg = tiny_dataset
    result = quick_start.run(model, name, config_dict={**cfg, **TINY_SEQ})
    assert set(result["test_result"]) == METRICS and set(result["best_valid_result"]) == METRICS
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())
    # the best checkpoint exists and loads into a fresh model of the same class
    checkpoint = load_checkpoint(result["checkpoint"])
    assert checkpoint["config"]["model"] == get_model_class(model).__name__
    assert any(torch.is_tensor(t) and t.numel() > 0 for t in checkpoint["state_dict"].values())
    # evaluating the saved checkpoint alone gives the run's own test figures back
    assert quick_start.evaluate_checkpoint(result["checkpoint"])["test_result"] == result["test_result"]


def test_same_split_for_every_model(tiny_dataset):
    name, cfg = tiny_dataset
    def held_out_pairs(data):  # (user, item) of every held-out row, as raw tokens
        d = data.dataset
        users = d.id2token(d.uid_field, d.inter_feat[d.uid_field].numpy())
        items = d.id2token(d.iid_field, d.inter_feat[d.iid_field].numpy())
        return sorted(zip(users.tolist(), items.tolist()))

    splits = []
    for model in ("SASRec", "BPR"):
        _, _, _, valid, test = quick_start.prepare(model, name, config_dict=cfg)
        splits.append((held_out_pairs(valid), held_out_pairs(test)))
    # a sequential and a general model hold out the very same (user, item) pairs: each user's last two
    assert splits[0] == splits[1] and len(splits[0][0]) == len(splits[0][1]) > 0


@pytest.mark.parametrize("model", ["MF", "LightGCN"])
def test_general_models_rank_many_users_per_eval_batch(model, tiny_dataset):
    # RecBole puts eval_batch_size // n_items users in a full-ranking batch of a general model: the shipped
    # value must not fall back to one user per batch on a catalogue the size of Beauty's (12,101 items)
    name, cfg = tiny_dataset
    cfg = {k: v for k, v in cfg.items() if k != "eval_batch_size"}  # the shipped value
    config, _, _, valid, _ = quick_start.prepare(model, name, config_dict=cfg)
    assert config["eval_batch_size"] // 12101 >= 64
    assert valid.step == config["eval_batch_size"] // valid._dataset.item_num > 1


def test_train_batches_per_epoch_shortens_epochs_and_the_schedule(tiny_dataset):
    from recbole_letter.quick_start import build_trainer

    name, cfg = tiny_dataset
    cfg = {**cfg, **TINY_SEQ, "train_batch_size": 64, "epochs": 2, "train_batches_per_epoch": 2,
           "lr_scheduler": "cosine", "warmup_ratio": 0.25}
    config, _, train_data, valid_data, _ = quick_start.prepare("SASRec", name, config_dict=cfg)
    assert len(train_data) > 4  # the limit really cuts epochs short
    model = get_model_class("SASRec")(config, train_data.dataset)
    trainer = build_trainer(config, model)
    first_users = []
    loss = model.calculate_loss

    def counted_loss(interaction):
        first_users.append(interaction[model.USER_ID][0].item())
        return loss(interaction)

    model.calculate_loss = counted_loss
    trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    assert len(first_users) == 4  # 2 epochs x 2 batches
    # the cosine spans the 4 steps that ran (1 warm-up step), so the last step leaves the LR at 0
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="train_batches_per_epoch"):
        build_trainer(quick_start.build_config("SASRec", name, config_dict={**cfg, "train_batches_per_epoch": 0}),
                      model)


class HostReads:
    """Counts the tensor methods that hand a value to Python (on a GPU each waits for the device)."""

    METHODS = ("item", "tolist", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch, optimizer):
        self.count, self.paused = 0, False
        for method in self.METHODS:
            original = getattr(torch.Tensor, method)
            monkeypatch.setattr(torch.Tensor, method, self._counted(original))
        step = optimizer.step

        def uncounted_step(*args, **kwargs):  # AdamW reads its step counters, host tensors on a GPU too
            self.paused = True
            try:
                return step(*args, **kwargs)
            finally:
                self.paused = False

        monkeypatch.setattr(optimizer, "step", uncounted_step)

    def _counted(self, original):
        def counted(tensor, *args, **kwargs):
            self.count += not self.paused
            return original(tensor, *args, **kwargs)

        return counted


def _small_sasrec_trainer(tiny_dataset):
    """A 1-layer SASRec on the slice, its LetterTrainer and training loader (batches of 64)."""
    from recbole_letter.quick_start import build_trainer

    name, cfg = tiny_dataset
    cfg = {**cfg, **TINY_SEQ, "train_batch_size": 64}
    config, _, train_data, _, _ = quick_start.prepare("SASRec", name, config_dict=cfg)
    model = get_model_class("SASRec")(config, train_data.dataset)
    return model, build_trainer(config, model), train_data


@pytest.mark.parametrize("parts", [False, True])
def test_training_loop_gives_recboles_epoch_and_reads_the_loss_once(tiny_dataset, monkeypatch, parts):
    from recbole.trainer import Trainer

    from recbole_letter.benchmark import BatchList
    from recbole_letter.trainer import default_autocast_dtype

    model, trainer, train_data = _small_sasrec_trainer(tiny_dataset)
    loss = model.calculate_loss
    if parts:  # a model whose loss comes in parts: the epoch's loss is the tuple of per-part sums
        model.calculate_loss = lambda interaction: (loss(interaction) * 0.25, loss(interaction) * 0.75)
    batches = BatchList(train_data)  # the same batches for both loops, drawn before counting
    start = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
             "rng": torch.get_rng_state()}
    epochs = {}
    for loop in ("recbole", "ours"):
        model.load_state_dict(start["model"])
        trainer.optimizer.load_state_dict(start["optimizer"])
        torch.set_rng_state(start["rng"])  # the same dropout masks
        trainer.nan_check_interval = 3  # as off a CPU: a NaN test every 3 batches
        reads = HostReads(monkeypatch, trainer.optimizer)
        with default_autocast_dtype("cpu", torch.bfloat16):
            if loop == "recbole":
                epoch_loss = Trainer._train_epoch(trainer, batches, 0)
            else:
                epoch_loss = trainer._train_epoch(batches, 0)
        monkeypatch.undo()
        epochs[loop] = epoch_loss, reads.count, copy.deepcopy(model.state_dict())
    n_batches = len(batches)
    assert n_batches >= 6
    assert epochs["ours"][0] == epochs["recbole"][0]  # exactly: float64 sums in the same order
    assert isinstance(epochs["ours"][0], tuple) == parts
    for key, value in epochs["ours"][2].items():
        assert torch.equal(value, epochs["recbole"][2][key]), key
    # RecBole reads every batch's loss and tests it for NaN; ours tests every 3rd batch's running sum,
    # then the epoch's sum once, and reads the epoch's loss once
    assert epochs["recbole"][1] >= 2 * n_batches
    assert epochs["ours"][1] == n_batches // 3 + 2


@pytest.mark.parametrize("interval, stops_after", [(1, 2), (100, 100), (1000, "epoch")])
def test_training_loop_stops_on_a_nan_loss(tiny_dataset, interval, stops_after):
    model, trainer, train_data = _small_sasrec_trainer(tiny_dataset)
    assert trainer.nan_check_interval == 1  # on a CPU every batch is tested, as in RecBole
    trainer.nan_check_interval = interval
    loss, batches = model.calculate_loss, []

    def nan_in_the_second_batch(interaction):
        batches.append(len(batches))
        return loss(interaction) * (float("nan") if len(batches) == 2 else 1.0)

    model.calculate_loss = nan_in_the_second_batch
    with pytest.raises(ValueError, match="Training loss is nan"):
        trainer._train_epoch(train_data, 0)
    # at once on a CPU; otherwise at the next test: every `interval` batches and at the epoch's end
    assert len(batches) == (len(train_data) if stops_after == "epoch" else stops_after)


def test_last_epoch_is_always_validated(tiny_dataset):
    from recbole_letter.quick_start import build_trainer

    name, cfg = tiny_dataset
    cfg = {**cfg, **TINY_SEQ, "epochs": 3, "eval_step": 2}
    config, _, train_data, valid_data, _ = quick_start.prepare("SASRec", name, config_dict=cfg)
    trainer = build_trainer(config, get_model_class("SASRec")(config, train_data.dataset))
    validated = []
    valid_epoch = trainer._valid_epoch
    trainer._valid_epoch = lambda *a, **k: validated.append(len(validated)) or valid_epoch(*a, **k)
    trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    assert len(validated) == 2  # after epoch 2 (eval_step) and after epoch 3, the last
    # a run shorter than eval_step still validates, so the best checkpoint the test reloads exists
    result = quick_start.run("SASRec", name, config_dict={**cfg, "epochs": 1})
    assert Path(result["checkpoint"]).is_file() and set(result["test_result"]) == METRICS


@pytest.mark.parametrize(
    "model,dataset,message",
    [
        ("NoSuchModel", "ml-100k", "unknown model 'NoSuchModel'; known here:"),
        ("SASRec", "NoSuchData", "dataset 'NoSuchData' not found: no file"),
    ],
)
def test_bad_names_one_clear_line(model, dataset, message):
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_letter.py"), f"--model={model}", f"--dataset={dataset}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr


def test_missing_column_and_empty_file(tiny_dataset, tmp_path):
    name, cfg = tiny_dataset
    bad = tmp_path / "bad" / "bad"
    bad.mkdir(parents=True)
    (bad / "bad.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['timestamp'\]"):
        quick_start.build_config("SASRec", "bad", config_dict={**cfg, "data_path": str(tmp_path / "bad")})
    (bad / "bad.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    with pytest.raises(ValueError, match="has no rows"):
        quick_start.build_config("SASRec", "bad", config_dict={**cfg, "data_path": str(tmp_path / "bad")})


def test_item_text_columns_are_required_only_where_a_tokenizer_reads_them(tiny_dataset, tmp_path):
    # a LETTER-JSON conversion has an .item without text: baselines and generators on given codes run on it
    name, cfg = tiny_dataset
    folder = tmp_path / name
    folder.mkdir()
    for suffix in ("inter", "item"):
        lines = (Path(cfg["data_path"]) / name / f"{name}.{suffix}").read_text().splitlines()
        if suffix == "item":
            lines = [line.split("\t")[0] for line in lines]  # item_id only
        (folder / f"{name}.{suffix}").write_text("\n".join(lines) + "\n")
    cfg = {**cfg, "data_path": str(tmp_path)}
    quick_start.build_config("SASRec", name, config_dict=cfg)
    quick_start.build_config("LETTER_TIGER", name, config_dict={**cfg, "item_codes_file": "codes.index.json"})
    for needs_text in ({}, {"item_codes_file": "codes.index.json", "tokenize_only": True}):
        with pytest.raises(ValueError, match=r"missing column\(s\) \['movie_title'\]"):
            quick_start.build_config("LETTER_TIGER", name, config_dict={**cfg, **needs_text})


def test_cli_several_models_writes_table(tiny_data_path, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_letter.py"), "--model=BPR,Caser,LightGCN", "--dataset=ml-tiny",
         f"--data_path={tiny_data_path}", "--epochs=1", "--show_progress=False", "--state=WARNING",
         "--embedding_size=8", f"--results_dir={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FutureWarning" not in proc.stderr  # RecBole's deprecated pandas / torch calls (compat.py)
    assert "sparse.SparseTensor" not in proc.stderr  # LightGCN's deprecated sparse constructor (compat.py)
    printed = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert {"BPR", "Caser", "LightGCN"} <= set(printed) and "test recall@10" in proc.stdout  # a row per model
    rows = json.loads((out / "ml-tiny.json").read_text())
    assert [r["model"] for r in rows] == ["BPR", "Caser", "LightGCN"]
    csv = (out / "ml-tiny.csv").read_text().splitlines()
    assert csv[0].startswith("model,") and len(csv) == 4
    # a fresh process evaluates a saved checkpoint alone and gets the run's test figures back
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_letter.py"), f"--checkpoint={rows[0]['checkpoint']}",
         "--state=WARNING", f"--results_dir={tmp_path / 'again'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "ml-tiny.json").read_text())
    assert again[0]["test_result"] == rows[0]["test_result"]


def test_ddp_two_processes_on_cpu(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the spawned ranks use gloo: RecBole's NCCL path wants a GPU each
    name, cfg = tiny_dataset
    # the process layout from a config file, as a recipe carries it (examples/cpu_recipe_instruments.yaml)
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(f"nproc: 2\nport: {free_port()}\n")
    # in a fresh process, with progress bars, as a recipe runs: its end is where a rank's leftovers show (a
    # named semaphore of tqdm's that a rank did not release made the resource tracker warn there)
    code = ("import json, sys; from recbole_letter import quick_start; print(json.dumps(quick_start.run("
            "'BPR', sys.argv[1], config_files=[sys.argv[2]], config_dict=json.loads(sys.argv[3]))))")
    cfg = {**cfg, "embedding_size": 8, "show_progress": True}
    proc = subprocess.run([sys.executable, "-c", code, name, str(recipe), json.dumps(cfg)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=_env_with_repo())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Train" in proc.stderr and "leaked" not in proc.stderr, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["test_result"]) == METRICS
    assert load_checkpoint(result["checkpoint"])["config"]["world_size"] == 2
    # its checkpoint (a DDP config inside: cuda:<rank> on GPUs, a process group) evaluates in one process
    again = quick_start.evaluate_checkpoint(result["checkpoint"])
    # DDP averages the ranks' metrics, each already rounded to 4 places
    assert again["test_result"] == pytest.approx(result["test_result"], abs=2e-4)
    # and it evaluates in two processes again, each on its share of the users
    shared = quick_start.evaluate_checkpoint(result["checkpoint"], {"nproc": 2, "port": free_port()}, splits=("test",))
    assert shared["test_result"] == pytest.approx(again["test_result"], abs=2e-4)
    assert shared["processes"] == 2 and "best_valid_result" not in shared and shared["test_seconds"] > 0


def test_ddp_ranks_end_with_the_process_that_spawned_them(tiny_dataset, tmp_path):
    """SIGTERM to a DDP run's parent alone (``kill <pid>``, ``timeout``) ends its ranks too. torch's own guard
    sends the ranks SIGINT when their parent dies, which a run started with SIGINT ignored (``nohup ... &``
    from a script: a non-interactive shell's background job) never sees: its ranks trained on as orphans."""
    psutil = pytest.importorskip("psutil")  # recbole, accelerate and peft require it
    name, cfg = tiny_dataset
    cfg = {**cfg, "embedding_size": 8, "nproc": 2, "port": free_port(), "epochs": 100000, "eval_step": 100000,
           "checkpoint_dir": str(tmp_path / "saved")}
    code = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # inherited by the spawned ranks
            f"from recbole_letter import quick_start; quick_start.run('BPR', {name!r}, config_dict={cfg!r})")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    ranks = []
    try:
        for _ in range(1200):  # until both ranks train (their checkpoint of an epoch exists), <= 120 s
            assert parent.poll() is None, "the run ended before it was stopped"
            try:
                ranks = [p for p in psutil.Process(parent.pid).children() if "spawn_main" in " ".join(p.cmdline())]
            except psutil.NoSuchProcess:  # a rank (or the parent) ended while being listed: poll() says which
                continue
            if len(ranks) == 2 and list((tmp_path / "saved").glob("*-last.pth")):
                break
            time.sleep(0.1)
        assert len(ranks) == 2
        parent.terminate()
        parent.wait(timeout=30)
        gone, alive = psutil.wait_procs(ranks, timeout=15)  # each rank checks its parent every second
        assert not alive, f"ranks still running after their parent ended: {[p.pid for p in alive]}"
    finally:
        for process in [parent, *ranks]:
            try:
                process.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass


def test_checkpoint_evaluates_on_this_machines_device(tiny_dataset, tmp_path):
    # a checkpoint from a GPU run, evaluated on a machine that may have no GPU: the saved config's device
    # is replaced by this machine's (before, building the model failed: "Torch not compiled with CUDA")
    name, cfg = tiny_dataset
    result = quick_start.run("BPR", name, config_dict={**cfg, "embedding_size": 8})
    checkpoint = load_checkpoint(result["checkpoint"])
    checkpoint["config"]["device"] = torch.device("cuda", 0)
    checkpoint["config"]["data_path"] = str(tmp_path / "moved" / name)  # and its data is elsewhere now
    torch.save(checkpoint, tmp_path / "from_gpu.pth")
    again = quick_start.evaluate_checkpoint(str(tmp_path / "from_gpu.pth"), {"data_path": cfg["data_path"]})
    assert again["test_result"] == pytest.approx(result["test_result"], abs=1e-4)


def test_ddp_resume_gives_every_rank_its_own_random_streams_back(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo ranks, as in test_ddp_two_processes_on_cpu
    # a finished 4-epoch run leaves the state after epoch 2 in -last.pth: resuming it re-runs epoch 3,
    # whose dropout on each rank must draw from that rank's stream (seeded seed + rank), not rank 0's
    name, cfg = tiny_dataset
    cfg = {**cfg, **TINY_SEQ, "epochs": 4, "train_batch_size": 256, "nproc": 2, "learning_rate": 0.01,
           "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "checkpoint_dir": str(tmp_path)}
    whole = quick_start.run("SASRec", name, config_dict={**cfg, "port": free_port()})
    (last,) = tmp_path.glob("*-last.pth")
    states = load_checkpoint(last)["rng"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    resumed = quick_start.run("SASRec", name, config_dict={**cfg, "port": free_port(), "resume_from": str(last)})
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    assert resumed["test_result"] == whole["test_result"]
    with pytest.raises(ValueError, match="written by a run of 2 process"):
        quick_start.run("SASRec", name, config_dict={**cfg, "nproc": 1, "resume_from": str(last)})


def test_many_learning_curves_on_one_figure_all_look_different(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from recbole_letter.learning_curve import LearningCurve, line_style, plot_curves

    assert len({tuple(line_style(i).values()) for i in range(40)}) == 40
    curves = []
    for i in range(12):  # past matplotlib's ten default colours
        curve = LearningCurve(str(tmp_path / f"run{i}.curve.csv"))
        for epoch in range(3):
            curve.add(epoch, 10.0 * (epoch + 1), 0.01 * (i + epoch), {"ndcg@10": 0.01 * (i + epoch)})
        curves.append((f"run {i}", curve.path))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at its lines
    png = plot_curves(curves, str(tmp_path / "all.png"))
    assert os.path.getsize(png) > 0
    (ax,) = figures[0].axes
    looks = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
    assert len(looks) == 12 and len(set(looks)) == 12
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [label for label, _ in curves]


def test_resume_from_last_checkpoint_continues_the_same_run(tiny_dataset, monkeypatch, tmp_path):
    from recbole_letter.trainer import LetterTrainer

    name, cfg = tiny_dataset
    cfg = {**cfg, **TINY_SEQ, "epochs": 4, "train_batch_size": 256, "lr_scheduler": "cosine", "warmup_ratio": 0.2}
    whole = quick_start.run("SASRec", name, config_dict=cfg)
    whole_curve = read_curve(whole["learning_curve"])  # a relative path: read before the chdir is undone

    # the same run, killed during its third epoch: epochs 0 and 1 (and their validation) are done
    train_batches = LetterTrainer._train_batches

    def killed_in_third_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == 2:
            raise KeyboardInterrupt
        return train_batches(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(LetterTrainer, "_train_batches", killed_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        quick_start.run("SASRec", name, config_dict={**cfg, "checkpoint_dir": str(tmp_path / "stopped")})
    monkeypatch.undo()
    (last,) = (tmp_path / "stopped").glob("*-last.pth")
    assert load_checkpoint(last)["epoch"] == 1

    resumed = quick_start.run("SASRec", name, config_dict={**cfg, "resume_from": str(last)})
    assert resumed["checkpoint"] == str(last).replace("-last.pth", ".pth")  # the stopped run's best file
    assert resumed["epochs"] == whole["epochs"] == 4
    # same weights, schedule, early-stopping state and random streams: the very same run
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    assert resumed["test_result"] == whole["test_result"]
    # the learning curve goes on where the stopped process left it: every validation once, same scores,
    # wall-clock minutes that keep growing across the two processes
    resumed_curve = read_curve(resumed["learning_curve"])
    assert resumed["learning_curve"] == str(last).replace("-last.pth", ".curve.csv")
    assert [p[0] for p in resumed_curve] == [p[0] for p in whole_curve] and len(whole_curve) >= 3
    assert [p[2] for p in resumed_curve] == [p[2] for p in whole_curve]
    minutes = [p[1] for p in resumed_curve]
    assert minutes[0] > 0 and all(b > a for a, b in zip(minutes, minutes[1:]))
    assert os.path.isfile(resumed["learning_curve"].replace(".csv", ".png"))
    with pytest.raises(ValueError, match="not a '-last.pth' file"):
        quick_start.run("SASRec", name, config_dict={**cfg, "resume_from": resumed["checkpoint"]})
    # the CPU half of test_resume_across_devices, which CI cannot run: a GPU run's file (its saved config
    # names a CUDA device, its generator states include CUDA's) continues on this machine's device,
    # re-running its last epoch to the same result
    state = load_checkpoint(last)
    assert state["epoch"] == 2 and state["rng"][0]["cuda"] is None
    state["rng"][0]["cuda"] = torch.zeros(16, dtype=torch.uint8)
    state["config"]["device"] = torch.device("cuda", 0)
    torch.save(state, last)
    again = quick_start.run("SASRec", name, config_dict={**cfg, "resume_from": str(last)})
    assert again["test_result"] == whole["test_result"]


def test_an_auto_amp_run_settles_again_where_it_is_resumed_or_evaluated(tiny_dataset, monkeypatch, caplog, tmp_path):
    """A run with enable_amp: auto started on a CPU with bfloat16 instructions (autocast) continues, and its
    checkpoint evaluates, in float32 on one without them; an explicit other value is another config."""
    name, cfg = tiny_dataset
    cfg = {**cfg, **TINY_SEQ, "epochs": 2, "enable_amp": "auto", "state": "INFO", "checkpoint_dir": str(tmp_path)}
    monkeypatch.setattr(common, "native_autocast", lambda device, dtype: True)
    first = quick_start.run("SASRec", name, config_dict=cfg)
    (last,) = tmp_path.glob("*-last.pth")  # the state after epoch 0
    stored = load_checkpoint(last)
    assert stored["amp_requested"] == "auto" and stored["config"]["enable_amp"] is True
    monkeypatch.setattr(common, "native_autocast", lambda device, dtype: False)
    caplog.set_level("INFO")
    resumed = quick_start.run("SASRec", name, config_dict={**cfg, "resume_from": str(last)})
    assert resumed["epochs"] == 2
    assert "enable_amp: auto settled to True where the run started and to False here" in caplog.text
    caplog.clear()
    quick_start.evaluate_checkpoint(first["checkpoint"])
    assert "enable_amp: auto -> False" in caplog.text
    with pytest.raises(ValueError, match="enable_amp: True there, False here"):
        quick_start.run("SASRec", name, config_dict={**cfg, "enable_amp": False, "resume_from": str(last)})


def _env_with_repo():
    """This environment with the repository on ``PYTHONPATH``, for a fresh interpreter that imports the package."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _run_in_cpu_process(name, cfg):
    """quick_start.run of SASRec in a fresh process that sees no GPU (RecBole hides them for gpu_id "")."""
    code = "import json, sys; from recbole_letter import quick_start; " \
           "quick_start.run('SASRec', sys.argv[1], config_dict=json.loads(sys.argv[2]))"
    proc = subprocess.run([sys.executable, "-c", code, name, json.dumps({**cfg, "gpu_id": ""})],
                          capture_output=True, text=True, timeout=300, env=_env_with_repo())
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resume_across_devices(tiny_dataset, tmp_path):
    # a finished 4-epoch run leaves the state after epoch 2 in -last.pth and resuming it re-runs epoch 3: a
    # CPU run's file continues on the GPU and a GPU run's on the CPU (the random generator states inside
    # must reach torch as CPU tensors whatever device the file is loaded for)
    name, cfg = tiny_dataset
    cfg = {**cfg, **TINY_SEQ, "epochs": 4, "train_batch_size": 256}
    cpu_cfg = {**cfg, "checkpoint_dir": str(tmp_path / "cpu")}
    _run_in_cpu_process(name, cpu_cfg)
    (last,) = (tmp_path / "cpu").glob("*-last.pth")
    assert load_checkpoint(last)["rng"][0]["cuda"] is None
    assert quick_start.run("SASRec", name, config_dict={**cpu_cfg, "resume_from": str(last)})["epochs"] == 4
    gpu_cfg = {**cfg, "checkpoint_dir": str(tmp_path / "gpu")}
    quick_start.run("SASRec", name, config_dict=gpu_cfg)
    (last,) = (tmp_path / "gpu").glob("*-last.pth")
    assert load_checkpoint(last)["rng"][0]["cuda"] is not None
    _run_in_cpu_process(name, {**gpu_cfg, "resume_from": str(last)})


class _SlowTokenizer:
    """A generator class whose tokenizer hook records who ran it, when, and with how many threads (rank 0
    takes longer than the process group's timeout)."""

    log = None
    seconds = 0.0

    @classmethod
    def tokenize(cls, config, dataset):
        import time

        rank = torch.distributed.get_rank()
        if rank == 0:
            time.sleep(cls.seconds)
        with open(cls.log, "a") as f:
            f.write(f"{rank}:{torch.get_num_threads()}\n")
        return rank


def _tokenizer_stage_worker(rank, port, log, seconds):
    import datetime

    # the default group times out before rank 0's tokenizer is done, as a real tokenizer outlasts the 30 minutes
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=seconds / 3))
    try:
        torch.set_num_threads(1)
        _SlowTokenizer.log, _SlowTokenizer.seconds = log, seconds
        quick_start.tokenizer_stage({"device": torch.device("cpu"), "nproc": 2}, _SlowTokenizer, None)
        assert torch.get_num_threads() == 1  # rank 0 gave the waiting rank's thread back
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_run_the_tokenizer_stage_after_rank_0(tmp_path):
    """Under DDP rank 0 builds the codes while the other ranks wait, for longer than the process group's
    timeout, and with their threads; they then call the hook, which reads rank 0's cache (a second call
    with the same config reads the cache: tests/test_tokenizer_pipeline.py)."""
    log = tmp_path / "calls.txt"
    torch.multiprocessing.spawn(_tokenizer_stage_worker, args=(free_port(), str(log), 3.0), nprocs=2, join=True)
    threads = min(2, quick_start.usable_cores())
    assert log.read_text().split() == [f"0:{threads}", "1:1"]  # rank 1 waited for rank 0's slow build


@pytest.mark.parametrize("variable,torch_threads,cores,nproc,threads", [
    (None, 2, 2, 2, 1), (None, 16, 16, 2, 8), (None, 2, 3, 2, 1), (None, 1, 1, 4, 1),
    (None, 8, 16, 2, 4),  # torch's default counts physical cores, the affinity logical ones (SMT)
    (None, 4, 4, 1, 4),  # one process here (several machines): torch's own count
    ("OMP_NUM_THREADS", 16, 16, 2, 16), ("MKL_NUM_THREADS", 16, 16, 2, 16),  # the user's count: untouched
])
def test_ddp_ranks_share_the_cores_unless_a_thread_count_is_set(monkeypatch, variable, torch_threads, cores, nproc,
                                                                 threads):
    before = torch.get_num_threads()
    for name in quick_start.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if variable:
        monkeypatch.setenv(variable, "3")
    monkeypatch.setattr(quick_start, "usable_cores", lambda: cores)
    try:
        torch.set_num_threads(torch_threads)
        quick_start.share_cores(nproc)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_the_suite_runs_in_a_worker_per_core_and_tests_named_one_by_one_in_this_process(monkeypatch):
    """pytest.ini's ``-n auto``: how many worker processes tests/conftest.py asks pytest-xdist for."""
    from types import SimpleNamespace

    import conftest

    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    workers = conftest.pytest_xdist_auto_num_workers
    for cores, expected in ((1, 0), (2, 2), (3, 3), (64, 4)):
        monkeypatch.setattr(conftest, "usable_cores", lambda: cores)
        assert workers(SimpleNamespace(args=["tests"])) == expected, cores
    assert workers(SimpleNamespace(args=["tests/test_plan.py", "tests/test_tiger.py::test_x"])) == 4
    assert workers(SimpleNamespace(args=["tests/test_plan.py::test_x", "tests/test_tiger.py::test_y"])) == 0
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert workers(SimpleNamespace(args=["tests/test_plan.py::test_x"])) == 3


def test_a_ddp_generator_run_builds_its_codes_once(tiny_dataset, tmp_path, monkeypatch, capfd):
    """The whole pipeline under DDP: rank 0's log says it built the codes; the run ends on both ranks."""
    from recbole_letter.benchmark import QUICK_OVERRIDES

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    name, cfg = tiny_dataset
    cfg = {**cfg, **QUICK_OVERRIDES, "state": "INFO", "checkpoint_dir": str(tmp_path), "nproc": 2,
           "train_batch_size": 256, "train_batches_per_epoch": 2, "port": free_port()}
    result = quick_start.run("LETTER_TIGER", name, config_dict=cfg)
    printed = capfd.readouterr()
    assert (printed.out + printed.err).count("item codes built") == 1  # rank 1 logs errors only
    # each rank took its share of the cores (quick_start.share_cores), not all of them
    layout = re.search(r"DDP: 2 processes here, (\d+) torch threads? each", printed.out + printed.err)
    assert layout, "no DDP layout line"
    if not any(os.environ.get(name) for name in quick_start.THREAD_VARIABLES):
        assert int(layout.group(1)) == max(1, min(FRESH_PROCESS_THREADS, quick_start.usable_cores()) // 2)
    assert set(result["test_result"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}


class _TwoPartModel(torch.nn.Module):
    """A model whose loss comes in two parts, as a generator's ``loss_chunks`` yields length buckets; batch
    rows are 4 inputs and a target. Its parameters are of two dtypes (float64, and a float32 shift), and
    one gets no gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # the same weights in every process, as DDP's broadcast at wrapping makes them
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()
        self.shift = torch.nn.Parameter(torch.full((1,), 0.5))
        self.unused = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))

    def loss_chunks(self, batch):
        for rows in (slice(len(batch) // 2, None), slice(None, len(batch) // 2)):
            residual = self.net(batch[rows, :4]) + self.shift.double() - batch[rows, 4:]
            yield (residual**2).sum() / len(batch)

    def calculate_loss(self, batch):
        return sum(self.loss_chunks(batch))


class _Batches(list):
    shuffle = False


def _one_step(model, batch, distributed, clip_grad_norm=None):
    """One SGD step of ``LetterTrainer``'s training loop on ``batch``."""
    from types import SimpleNamespace

    from recbole_letter.trainer import LetterTrainer

    trainer = SimpleNamespace(model=model, config={"single_spec": not distributed}, device=torch.device("cpu"),
                              optimizer=torch.optim.SGD(model.parameters(), lr=0.1), enable_scaler=False,
                              enable_amp=False, nan_check_interval=1, _check_nan=lambda loss: None,
                              clip_grad_norm=clip_grad_norm, gpu_available=False)
    LetterTrainer._train_batches(trainer, _Batches([batch]), 0)


CLIP_SETTINGS = [None, {"max_norm": 1e-3}]


def _ddp_step_worker(rank, port, data, out):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for setting, clip_grad_norm in enumerate(CLIP_SETTINGS):
            model = _TwoPartModel()
            _one_step(model, data[rank::2], distributed=True, clip_grad_norm=clip_grad_norm)
            torch.save(model.state_dict(), f"{out}.{setting}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_a_ddp_step_with_loss_parts_is_the_whole_batch_step(tmp_path):
    """Under DDP ``LetterTrainer`` runs a backward pass per loss part (length bucket) on each rank, then
    averages the gradients itself (``average_gradients``): both ranks end the step with the weights one
    process gets from the whole batch (float64 up to a few ulps; the float32 shift to float32 rounding), the
    unused parameter unchanged. With ``clip_grad_norm`` (a norm far below the gradients') that holds only if
    the clipping sees the averaged gradients, as the release's ``Trainer`` clips the global batch's. Both
    settings in one pair of ranks (a spawn costs seconds: each rank imports torch and recbole)."""
    data = torch.randn(8, 5, dtype=torch.float64)
    out = tmp_path / "weights"
    torch.multiprocessing.spawn(_ddp_step_worker, args=(free_port(), data, str(out)), nprocs=2, join=True)
    for setting, clip_grad_norm in enumerate(CLIP_SETTINGS):
        _check_ddp_step(data, [torch.load(f"{out}.{setting}.{rank}", weights_only=True) for rank in (0, 1)],
                        clip_grad_norm)


def _check_ddp_step(data, ranks, clip_grad_norm):
    """The two ranks' weights after the step: equal, and the whole batch's step in one process."""
    whole = _TwoPartModel()
    _one_step(whole, data, distributed=False, clip_grad_norm=clip_grad_norm)
    for name, value in whole.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), (name, clip_grad_norm)
        tolerance = {"rtol": 1e-12, "atol": 1e-14} if value.dtype == torch.float64 else {"rtol": 1e-6, "atol": 1e-7}
        if clip_grad_norm and value.dtype == torch.float64:
            # the clipping scales every step by max_norm / (total norm), and the total norm takes in the float32
            # shift's gradient, which the two ways sum in another order: the float64 steps (at most lr x max_norm
            # long, lr 0.1 in _one_step) agree to a few float32 roundings of their length
            tolerance["atol"] = 0.1 * clip_grad_norm["max_norm"] * 4 * torch.finfo(torch.float32).eps
        torch.testing.assert_close(ranks[0][name], value, **tolerance, msg=lambda m: f"{name}, {clip_grad_norm}: {m}")
    assert torch.equal(ranks[0]["unused"], torch.ones(2, dtype=torch.float64))
