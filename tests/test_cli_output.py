"""What the command line prints after a run: one model's metrics, or several models side by side."""

import json

import run_recbole_letter


def test_side_by_side_prints_a_row_per_model_and_keeps_every_column_in_the_files(tiny_data_path, tmp_path, capsys):
    argv = ["--model=Pop,BPR", "--dataset=ml-tiny", f"--data_path={tiny_data_path}", "--epochs=1",
            "--embedding_size=8", "--show_progress=False", "--show_plan=False", "--state=WARNING",
            f"--results_dir={tmp_path / 'out'}"]
    assert run_recbole_letter.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert "test recall@10" in lines[header] and "run id" in lines[header]
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [row[0] for row in rows] == ["Pop", "BPR"]
    assert all(len(row) == 7 and row[-1].startswith(f"{row[0]}-ml-tiny-") for row in rows)
    saved = [json.loads(line) for line in (tmp_path / "out" / "ml-tiny.jsonl").read_text().splitlines()]
    assert [row["model"] for row in saved] == ["Pop", "BPR"]
    assert [row["run_id"] for row in saved] == [row[-1] for row in rows]
