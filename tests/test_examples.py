"""The property files under examples/ pass the config checks a user's --config_files get."""

from pathlib import Path

import pytest
import yaml

from recbole_letter import quick_start
from recbole_letter.common import amp_dtype, native_autocast

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))
MODEL = {"smollm2_ml100k.yaml": "LETTER_LC_Rec"}  # the others configure LETTER_TIGER


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_property_file_builds_a_config(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RecBole's logger writes ./log
    config = quick_start.build_config(MODEL.get(path.name, "LETTER_TIGER"), "ml-100k", config_files=[str(path)],
                                      config_dict={"state": "WARNING"})
    for line in path.read_text().splitlines():  # every key the file sets reaches the config with its value
        key, sep, value = line.split("#")[0].partition(":")
        if sep and value.strip() and not line.startswith((" ", "#")):
            expected = yaml.safe_load(value)
            if key == "enable_amp" and expected == "auto":  # settled for this machine's device
                expected = native_autocast(config["device"].type, amp_dtype(config))
            assert str(config[key.strip()]) == str(expected), key
