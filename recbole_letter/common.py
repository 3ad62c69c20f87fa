"""Names shared by several stages: where the property files are, torch dtypes by config name, and the
code tokens of item codes.

Every stage may import this module; it imports nothing of the package, so imports keep going one way
(data -> tokenizer -> model / generation -> trainer -> quick_start / benchmark). Atomic writes, the
other shared helper, are in ``recbole_letter.files``.
"""

import re
import string
from pathlib import Path

import torch

# ---- the property files (properties/) ------------------------------------------------------------
# An installed package carries them as recbole_letter/properties/ (setup.py's package_dir); a checkout (or
# an editable install) has them in the top-level folder beside the package.
_PACKAGE = Path(__file__).resolve().parent
PROPERTIES_DIR = _PACKAGE / "properties" if (_PACKAGE / "properties").is_dir() else _PACKAGE.parent / "properties"

# ---- dtypes by config name ---------------------------------------------------------------------
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AMP_DTYPES = {name: DTYPES[name] for name in ("bfloat16", "float16")}  # what autocast can run in


def torch_dtype(name, key, choices=DTYPES):
    """The torch dtype a config value names (``key`` is the config key, for the error message)."""
    if name not in choices:
        raise ValueError(f"{key} must be one of {sorted(choices)}, got {name!r}")
    return choices[name]


def amp_dtype(config):
    """The ``amp_dtype`` key as a torch dtype: what ``enable_amp`` autocasts to, in training and decoding."""
    return torch_dtype(config["amp_dtype"] or "bfloat16", "amp_dtype", AMP_DTYPES)  # ~ = bfloat16 (config_check allows it)


# what a device needs to multiply amp_dtype matrices in hardware, by device type and dtype
NATIVE_AUTOCAST_NEEDS = {("cpu", torch.bfloat16): "avx512_bf16 or AMX", ("cpu", torch.float16): "AMX-FP16",
                         ("cuda", torch.bfloat16): "compute capability 8.0"}


def _cpu_has(name):
    """``torch.cpu._is_<name>_supported()`` (a private torch API: False where this torch lacks it)."""
    return bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)())


def native_autocast(device_type, dtype):
    """Whether ``device_type`` multiplies ``dtype`` matrices in hardware (:data:`NATIVE_AUTOCAST_NEEDS`), the
    case where autocasting to it can pay off over float32. Elsewhere it is emulated: on an x86 CPU without
    avx512_bf16 or AMX, oneDNN's bfloat16 made a training step many times slower than float32
    (docs/generation.md, "Mixed precision"). Not recognised here, so False: ARM CPUs' bfloat16 instructions."""
    if device_type == "cuda":
        return dtype == torch.float16 or torch.cuda.get_device_capability()[0] >= 8  # any torch version
    if device_type == "cpu":
        if dtype == torch.bfloat16:
            return _cpu_has("avx512_bf16") or _cpu_has("amx_tile")
        return _cpu_has("amx_fp16")
    return False


def missing_instructions(device_type, dtype):
    """``"this CPU has no bfloat16 matrix instructions (avx512_bf16 or AMX)"``: what the log lines say where
    ``device_type`` would emulate ``dtype`` matrices (:data:`NATIVE_AUTOCAST_NEEDS`)."""
    name = {"cpu": "CPU", "cuda": "GPU"}.get(device_type, device_type)
    needs = NATIVE_AUTOCAST_NEEDS.get((device_type, dtype), "hardware support")
    return f"this {name} has no {str(dtype).removeprefix('torch.')} matrix instructions ({needs})"


def settle_enable_amp(config):
    """Turn ``enable_amp`` into the bool RecBole's trainer and the models read: ``auto`` -> True where the
    device computes ``amp_dtype`` natively (:func:`native_autocast`), False elsewhere; True / False (or 1 / 0)
    as given. Returns ``(level, line)`` for the log, or ``None`` when there is nothing to say: ``True`` on a
    device that would emulate the dtype stays True (the user asked for it), with a warning."""
    requested, dtype, device = config["enable_amp"], amp_dtype(config), config["device"].type
    if requested != "auto":
        config["enable_amp"] = bool(requested)
        if not requested:
            return None
    native = native_autocast(device, dtype)
    if requested == "auto":
        config["enable_amp"] = native
        if native:
            name = {"cpu": "CPU", "cuda": "GPU"}.get(device, device)
            return "info", (f"enable_amp: auto -> True: autocast to {str(dtype).removeprefix('torch.')}, which "
                            f"this {name} computes natively")
        return "info", (f"enable_amp: auto -> False: {missing_instructions(device, dtype)}, so autocast would be "
                        f"slower than float32; running in float32")
    if native:
        return None
    return "warning", (f"enable_amp: True, but {missing_instructions(device, dtype)}: autocast emulates them, many times slower than float32 (--enable_amp=auto autocasts "
                       f"only where the device has them)")


# ---- code tokens: level l's code c is named <{a+l}_{c}> (the LETTER / LC-Rec releases' layout) ----
LEVEL_LETTERS = string.ascii_lowercase
CODE_TOKEN = re.compile(r"<([a-z])_(\d+)>")  # group 1: the level's letter, group 2: the code


def code_token(level, code):
    """``code_token(0, 12) == "<a_12>"``: the name of ``code`` at ``level`` (0-based)."""
    if level >= len(LEVEL_LETTERS):
        raise ValueError(f"at most {len(LEVEL_LETTERS)} code levels have token names, got level {level + 1}")
    return f"<{LEVEL_LETTERS[level]}_{code}>"


def code_token_names(codebook_sizes):
    """``<a_0> .. <a_{N1-1}>, <b_0> ..``: one token per (level, code), level-major (the trie's layout)."""
    if len(codebook_sizes) > len(LEVEL_LETTERS):
        raise ValueError(f"at most {len(LEVEL_LETTERS)} code levels have token names, got {len(codebook_sizes)}")
    return [code_token(level, code) for level, size in enumerate(codebook_sizes) for code in range(size)]
