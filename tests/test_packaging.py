"""The built wheel: it carries every property file, and a config builds from it in an unrelated folder."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path):
    """The wheel of a copy of the project (building in the checkout would leave build/ behind)."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("recbole_letter", "properties"):
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    for name in ("setup.py", "run_recbole_letter.py"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, cwd=tmp_path)  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("recbole_letter-*.whl")
    return wheel


def test_wheel_carries_the_property_files_and_runs_from_any_folder(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
        entry_points = next(archive.read(m).decode() for m in members if m.endswith(".dist-info/entry_points.txt"))
        archive.extractall(tmp_path / "installed")
    expected = {f"recbole_letter/properties/{p.relative_to(REPO / 'properties').as_posix()}"
                for p in (REPO / "properties").rglob("*.yaml")}  # fmt: skip
    assert expected and expected <= members, sorted(expected - members)
    assert "recbole_letter/templates/lc_rec_prompts.json" in members and "run_recbole_letter.py" in members
    assert "run_recbole_letter = run_recbole_letter:cli" in entry_points

    # the unpacked wheel first on the path (as site-packages would hold it), run from an unrelated folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("from recbole_letter import common, quick_start; "
             "files = quick_start.property_files('LETTER_TIGER', 'ml-100k'); "
             "config = quick_start.build_config('SASRec', 'ml-100k', config_dict={'state': 'WARNING'}); "
             "print(common.PROPERTIES_DIR); print(len(files)); print(config['valid_metric'])")  # fmt: skip
    env = {"PYTHONPATH": str(tmp_path / "installed"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    properties_dir, n_files, valid_metric = out.stdout.split()[-3:]
    assert Path(properties_dir) == tmp_path / "installed" / "recbole_letter" / "properties"
    # overall, tokenizer, dataset, model; NDCG@10 is overall.yaml's (RecBole's own default is MRR@10)
    assert int(n_files) >= 4 and valid_metric == "NDCG@10"
