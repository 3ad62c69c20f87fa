"""Bad command-line values: one ``error:`` line, exit status 2, no traceback; values never eval'd (issues 23, 24)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from recbole.config import Config

import run_recbole_letter
from recbole_letter import config_check, quick_start
from recbole_letter.config_check import ConfigError, parse_value

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = "__import__('os').system('touch PWNED')"

# Values RecBole's own conversion (eval) typed; the literal parser gives the same Python objects.
SAME_AS_RECBOLE = [
    "''", "0", "2", "-1", "1e-3", "0.001", "True", "true", "False", "None", "'0'", "0,1",
    "a.yaml,b.yaml", "../shared/data", "NDCG@10", "[5,inf)", "cosine", "127.0.0.1", "abc",
    "{'split': {'RS': [0.8,0.1,0.1]}}", "[512,256]", "[5, 10]", "['Recall','NDCG']",
]
# Where they differ, on purpose: YAML's null and flow collections (RecBole kept these as strings, so
# --text_fields="[title, categories]" reached the tokenizer as a string); no arithmetic, no names.
DIFFERS_FROM_RECBOLE = {
    "~": None,
    "[title, categories]": ["title", "categories"],
    "{LS: valid_and_test}": {"LS": "valid_and_test"},
    "1+2": "1+2",
    PAYLOAD: PAYLOAD,
}


def test_parse_value_types_literals_as_recbole_did():
    for text in SAME_AS_RECBOLE:
        old = Config._convert_config_dict(None, {"v": text})["v"]  # safe: these texts are literals
        assert parse_value(text) == old and type(parse_value(text)) is type(old), text
    for text, expected in DIFFERS_FROM_RECBOLE.items():
        assert parse_value(text) == expected, text


def test_values_that_worked_keep_working(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 3\n")
    (tmp_path / "b.yaml").write_text("stopping_step: 2\n")
    overrides = quick_start.parse_overrides([
        "--gpu_id=''", "--eval_args={'split': {'RS': [0.8,0.1,0.1]}}", "--enable_amp=True", "--nproc=2",
        "--tokenizer_encoder_layers=[512,256]", "--text_fields=[movie_title]", "--learning_rate=1e-3",
        "--topk=[5,10]", "--state=WARNING",
    ])
    assert overrides["gpu_id"] == "" and overrides["nproc"] == 2 and overrides["enable_amp"] is True
    config = quick_start.build_config("SASRec", "ml-100k", [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")],
                                      overrides)
    assert (config["epochs"], config["stopping_step"], config["learning_rate"]) == (3, 2, 0.001)
    assert config["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]} and config["text_fields"] == ["movie_title"]
    assert config["tokenizer_encoder_layers"] == [512, 256] and str(config["device"]) == "cpu"


def test_no_value_is_ever_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parse_value(PAYLOAD)
    quick_start.parse_overrides([f"--checkpoint_dir={PAYLOAD}"])
    # strings in a Python caller's config_dict were eval'd by RecBole's Config too
    config = quick_start.build_config("SASRec", "ml-100k", config_dict={"checkpoint_dir": PAYLOAD, "epochs": "3"})
    assert config["checkpoint_dir"] == PAYLOAD and config["epochs"] == 3
    with pytest.raises(ConfigError, match="unknown config key 'x'"):
        quick_start.parse_overrides([f"--x={PAYLOAD}"])
    # the whole command line: the payload travels as a path as far as the dataset check
    assert run_recbole_letter.main(["--model=SASRec", "--dataset=NoSuchData", f"--data_path={PAYLOAD}"]) == 2
    assert not (tmp_path / "PWNED").exists()


def _bad_yaml(tmp_path, text):
    path = tmp_path / "user.yaml"
    path.write_text(text)
    return f"--config_files={path}"


# (argv, the one line on stderr: a substring of it). One case per class of mistake.
CASES = [
    (["--epochs=abc"], "error: epochs='abc': expected an integer"),
    (["--show_progress=yes"], "error: show_progress='yes': expected a boolean (True or False)"),
    (["--enable_amp=yes"], "error: enable_amp='yes': expected True, False or auto"),
    (["--train_batch_size=0"], "error: train_batch_size=0: expected an integer >= 1"),
    (["--learning_rate=-0.1"], "error: learning_rate=-0.1: expected a number > 0"),
    (["--time_budget=0"], "error: time_budget=0: expected a number > 0"),
    (["--dropout_prob=1.5"], "error: dropout_prob=1.5: expected a number in [0, 1)"),
    (["--topk=[0,10]"], "error: topk=[0, 10]: expected a positive integer or a non-empty list"),
    (["--amp_dtype=fp16"], "error: amp_dtype must be one of bfloat16, float16, ~, got 'fp16'"),
    (["--cf_valid_metric=mrr"], "error: cf_valid_metric must be one of ndcg@10, recall@10, loss, got 'mrr'"),
    (["--item_codes_collisions=drop"], "error: item_codes_collisions must be one of free_last_code, extra_level, got 'drop'"),
    (["--metrics=[Recall,NDGC]"], "no metric 'NDGC'; did you mean 'ndcg'?"),
    (["--lerning_rate=0.1"], "error: unknown config key 'lerning_rate' (did you mean 'learning_rate'"),
    (["--data=x"], "error: unknown config key 'data'"),
    (["--epochs=1", "--epochs=2"], "error: --epochs given twice ('1' and '2')"),
    (["stray"], "error: unrecognised argument 'stray': overrides are written --key=value"),
    (["--max_evals=abc"], "error: argument --max_evals: invalid int value: 'abc'"),
    (["--model=sasrec"], "error: unknown model 'sasrec'; did you mean 'SASRec'? (names are case-sensitive)"),
    (["--model=SASRec,sasrec"], "error: unknown model 'sasrec'; did you mean 'SASRec'?"),
    (["--model=NoSuchModel"], "error: unknown model 'NoSuchModel'; known here:"),
    (["--model=SASRec", "--dataset=ml-100K"], "ml-100K.inter; did you mean 'ml-100k'? Known datasets:"),
    (["--model=SASRec", "--dataset=NoSuchData"], "error: dataset 'NoSuchData' not found: no file"),
    (["--model=SASRec", "--topk=5"], "error: valid_metric='NDCG@10': expected a metric this run computes"),
    ("yaml_key", "unknown config key 'lerning_rate' (did you mean 'learning_rate'"),
    ("yaml_syntax", "not valid YAML (line 2)"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[str(i) for i in range(len(CASES))])
def test_every_bad_value_is_one_line(argv, message, tmp_path, capsys):
    if argv == "yaml_key":
        argv = ["--model=SASRec", _bad_yaml(tmp_path, "lerning_rate: 0.1\n")]
    elif argv == "yaml_syntax":
        argv = ["--model=SASRec", _bad_yaml(tmp_path, "epochs: [1,\n")]
    try:
        status = run_recbole_letter.main(argv + [f"--results_dir={tmp_path}"])
    except SystemExit as exited:  # argparse's own errors
        status = exited.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err, err


def test_beam_size_below_topk_fails_up_front():
    # run_recbole_letter checks it after building the config (the model checks it again once data is loaded)
    with pytest.raises(ConfigError, match=r"beam_size=5: expected an integer >= the largest topk \(10\)"):
        config_check.check_beam_size({"topk": [5, 10], "beam_size": 5}, "LETTER_TIGER")
    config_check.check_beam_size({"topk": [5, 10], "beam_size": 5}, "SASRec")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match="did you mean 'SASRec'"):
        quick_start.build_config("sasrec", "ml-100k")
    assert config_check.check_value("data_path", 5) == "5"  # a number where a path goes: its text


def test_command_line_in_a_subprocess(tmp_path):
    """The real script: exit status 2, exactly one line on stderr, no traceback, no file made by a payload."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs = {  # three at once (each pays for importing torch and RecBole); the other classes run in-process above
        "--epochs=abc": "epochs='abc': expected an integer",
        "--model=sasrec": "unknown model 'sasrec'; did you mean 'SASRec'?",
        f"--x={PAYLOAD}": "unknown config key 'x'",
    }
    procs = {
        arg: subprocess.Popen([sys.executable, str(REPO / "run_recbole_letter.py"), arg], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for arg in runs
    }
    for arg, proc in procs.items():
        _, err = proc.communicate(timeout=240)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (arg, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and runs[arg] in lines[0], (arg, err)
    assert not (tmp_path / "PWNED").exists()


def test_kd_dagfm_teacher_is_a_class_name_not_code(tmp_path):
    # before: RecBole's KD_DAGFM eval()'d config["teacher"] when the model was built
    assert config_check.check_value("teacher", "CrossNet") == "CrossNet"
    marker = tmp_path / "PWNED"
    with pytest.raises(ConfigError, match="teacher must be one of CrossNet, CIN, got"):
        quick_start.build_config("KD_DAGFM", "ml-100k", config_dict={"teacher": f"__import__('os').system('touch {marker}')"})
    assert not marker.exists()
