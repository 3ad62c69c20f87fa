"""The paper-reproduction commands: resumable runs, table layout, sweep plot, and the main job end to end."""

import json
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
        return {"model": model, "dataset": dataset, "test_result": metrics, "best_valid_result": metrics}

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


def test_ablation_variants_follow_table2(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(quick_start, "run", fake_run(calls))
    benchmark.ablation("Instruments", out_dir=tmp_path)
    assert [c[0] for c in calls] == ["TIGER"] + ["LETTER_TIGER"] * 4
    settings = [c[1] for c in calls]
    assert settings[1]["beta"] == 0.0 and settings[2]["alpha"] == 0.0
    assert [s["tau"] for s in settings] == [1.0, 1.0, 1.0, 1.0, benchmark.BEST_TAU]
    assert "0.1122" in (tmp_path / "ablation-Instruments.md").read_text()


def test_sweep_writes_plot(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(quick_start, "run", fake_run(calls))
    benchmark.sweep("Beauty", "tau", [0.7, 1.0], out_dir=tmp_path)
    assert [c[1]["tau"] for c in calls] == [0.7, 1.0]
    png = tmp_path / "sweep-tau-Beauty.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown --param"):
        benchmark.sweep("Beauty", "nope", out_dir=tmp_path)


def test_letter_tiger_end_to_end_and_tokenize_only(tiny_dataset, tmp_path):
    """The main job's path on the tiny slice: text + CF embeddings -> tokenizer -> T5 -> beam search."""
    name, cfg = tiny_dataset
    cfg = {**cfg, **benchmark.QUICK_OVERRIDES, "state": "WARNING"}
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
