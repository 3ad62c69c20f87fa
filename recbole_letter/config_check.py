"""Config values from the command line and from config files: parsed as literals, never ``eval``'d, and checked.

Every bad value is one :class:`ConfigError` (a ``ValueError``) naming the key, the value and what is
expected; ``run_recbole_letter.py`` prints it as one ``error:`` line and exits with status 2.

* :func:`parse_value` types one ``--key=value`` text: Python literals (``ast.literal_eval``: numbers,
  quoted strings, lists, dicts, tuples, ``None``), ``true``/``false`` in any case, YAML's ``~``/``null``,
  YAML flow collections (``[title, categories]``, ``{RS: [0.8, 0.1, 0.1]}``); anything else stays the
  string it is. RecBole's ``Config._convert_config_dict`` (``eval``) never sees the text.
* Known keys: RecBole's property files (``recbole/properties/**.yaml``, every model and dataset) and its
  documented argument lists, this project's ``properties/`` tree, the distributed/runtime keys, and the few
  keys code reads without a YAML default. A misspelled key is an error with the closest known keys.
* Types come from the defaults in those files (and their ``# (int)`` style annotations): a key whose
  defaults are all integers wants an integer, ints are accepted for floats, ``~`` where a default is ``~``
  or the annotation says ``or None``.
* Ranges and choices: :data:`RULES`; checks that need the merged config: :func:`check_final`
  (``valid_metric`` among ``metrics@topk``) and :func:`check_beam_size` (``beam_size >= max(topk)``).
* Model names must match exactly (``SASRec``, not ``sasrec``); datasets likewise.
"""

import ast
import difflib
import functools
import importlib.util
import numbers
import os
import re
from pathlib import Path

import yaml
from recbole.evaluator.register import metric_types
from recbole.utils import argument_list

from recbole_letter.common import PROPERTIES_DIR
from recbole_letter.model import ALIASES, BASELINES, GENERATIVE_MODELS, RECBOLE_FAMILIES, canonical_name, is_generative
from recbole_letter.tokenizer.item_codes import COLLISION_RULES
EMBEDDED_DATASETS = ("ml-100k",)


class ConfigError(ValueError):
    """A bad config key, value, model or dataset name (printed as one ``error:`` line, exit status 2)."""


# ---------------------------------------------------------------------------------------------- parsing


class _Loader(yaml.SafeLoader):
    """YAML's safe loader with RecBole's float resolver (``1e-3`` is a float, as in RecBole's files)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

_NULLS = ("~", "null", "Null", "NULL")
_LITERAL_TYPES = (str, int, float, list, tuple, dict, bool, type(None))


def parse_value(text):
    """One command-line value -> a Python value, without evaluating anything.

    ``ast.literal_eval`` first (what RecBole's ``eval`` produced for literals: ``5``, ``1e-3``, ``'0'``,
    ``[5, 10]``, ``{'RS': [0.8, 0.1, 0.1]}``, ``0,1`` (a tuple), ``None``, ``True``); then ``true`` /
    ``false`` in any case (as RecBole), ``~`` / ``null`` (as in YAML files), and a YAML flow list or
    mapping (``[title, categories]``, ``{split: {LS: valid_and_test}}``); else the text itself
    (``../shared/data``, ``NDCG@10``, ``[5,inf)``, ``''`` stays ``''``). Non-strings pass through.
    """
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if not stripped:
        return text
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    else:
        return value if isinstance(value, _LITERAL_TYPES) else text
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    if stripped in _NULLS:
        return None
    if stripped[0] in "[{":
        try:
            value = yaml.load(stripped, Loader=_Loader)
        except yaml.YAMLError:
            return text
        if isinstance(value, (list, dict)):
            return value
    return text


def split_override(arg):
    """``--key=value`` -> ``(key, text)``; a :class:`ConfigError` for anything else."""
    if not arg.startswith("--") or "=" not in arg:
        raise ConfigError(f"unrecognised argument {arg!r}: overrides are written --key=value")
    key, text = arg[2:].split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ConfigError(f"unrecognised argument {arg!r}: a config key is letters, digits and '_'")
    return key, text


def parse_args(args):
    """``["--key=value", ...]`` -> ``{key: value}`` parsed by :func:`parse_value` (not yet checked)."""
    overrides, texts = {}, {}
    for arg in args:
        key, text = split_override(arg)
        if key in texts and texts[key] != text:
            raise ConfigError(f"--{key} given twice ({texts[key]!r} and {text!r}); give it once")
        texts[key] = text
        overrides[key] = parse_value(text)
    return overrides


def load_yaml_file(path):
    """A user's config file as a dict, through YAML's safe loader; one-line errors."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not a UTF-8 text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected 'key: value' lines, got a {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------ known keys


def _recbole_dir():
    return Path(importlib.util.find_spec("recbole").submodule_search_locations[0])


# Keys read from the config without a YAML default: DDP / runtime (RecBole and quick_start.run), values
# RecBole sets itself, and RecBole's documented arguments whose default file is not shipped.
EXTRA_KEYS = {
    "nproc": "int", "world_size": "int", "ip": "str", "port": "int or str", "offset": "int",
    "local_rank": "int", "model": "str", "dataset": "str", "config_file": None, "config_files": None,
    "single_spec": "bool", "device": None, "eval_type": None, "MODEL_TYPE": None, "MODEL_INPUT_TYPE": None,
    "valid_neg_sample_args": None, "test_neg_sample_args": None, "neg_sampling": None,
    "training_neg_sample_num": None, "verbose": "bool", "encoding": "str", "tail_ratio": "float",
    "text_fields": "list or None", "run_id": "str or None",
}
# Types for keys whose default is ~ with no annotation in the YAML files, or that take more than their
# default's type (enable_amp: RecBole's bool, or auto).
TYPE_HINTS = {
    "text_encoder_device": "str or None", "cf_emb_file": "str or None", "item_codes_file": "str or None",
    "resume_from": "str or None", "lr_scheduler": "str or None", "train_batches_per_epoch": "int or None",
    "tokenizer_stop_collision_rate": "float or None", "topk": "list or int", "amp_dtype": "str or None",
    "llm_dtype": "str or None", "state": "str or None", "gpu_id": "str or int or tuple",
    "metrics": "list or str", "load_col": "dict or None", "train_neg_sample_args": "dict or None",
    "user_inter_num_interval": "str or None", "item_inter_num_interval": "str or None",
    "enable_amp": "bool or str", "time_budget": "float or None",
}
_WORDS = {"int": "int", "integer": "int", "float": "float", "str": "str", "string": "str", "bool": "bool",
          "list": "list", "dict": "dict", "none": "none", "tuple": "tuple"}
_ANNOTATION = re.compile(r"^([A-Za-z_]\w*)\s*:.*?#\s*\(([A-Za-z ]+)\)")


def _kinds_of_annotation(text):
    kinds = set()
    for part in text.split(" or "):
        word = part.strip().split(" ")[0].lower()  # "list of int" -> list
        if word not in _WORDS:
            return set()  # not a type annotation
        kinds.add(_WORDS[word])
    return kinds


def _kind(value):
    if value is None:
        return "none"
    for kind, cls in (("bool", bool), ("int", numbers.Integral), ("float", numbers.Real), ("str", str),
                      ("list", list), ("dict", dict), ("tuple", tuple)):
        if isinstance(value, cls):
            return kind
    return "other"


@functools.lru_cache(maxsize=None)
def known_keys():
    """``{key: frozenset of kinds}`` (empty = any value) over RecBole's and this project's property files."""
    files = sorted((_recbole_dir() / "properties").rglob("*.yaml")) + sorted(PROPERTIES_DIR.rglob("*.yaml"))
    kinds, optional = {}, set()
    for path in files:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_Loader)
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            kinds.setdefault(key, set()).add(_kind(value))
        for line in text.splitlines():
            match = _ANNOTATION.match(line)
            if match and match.group(1) in data:
                kinds[match.group(1)] |= _kinds_of_annotation(match.group(2))
            # documented as optional in a comment: "cf_epochs: 30  # ... when cf_stopping_step is ~"
            optional.update(re.findall(r"#.*?([A-Za-z]\w*_\w+)\s*(?:is|=|:)\s*~", line))
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        for key in getattr(argument_list, name):
            kinds.setdefault(key, set())
    for key, hint in {**EXTRA_KEYS, **TYPE_HINTS}.items():
        extra = _kinds_of_annotation(hint) if hint else set()
        if key in TYPE_HINTS:
            kinds[key] = extra
        else:
            kinds[key] = kinds.get(key, set()) | extra if hint else set()
    result = {}
    for key, found in kinds.items():
        found = set(found) - {"other"} | ({"none"} if key in optional and key not in TYPE_HINTS else set())
        # a key with only ~ defaults and no annotation takes any value
        result[key] = frozenset() if found <= {"none"} else frozenset(found)
    return result


# ------------------------------------------------------------------------------------ ranges, choices


def _number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _rule(test, expected):
    return lambda v: None if test(v) else expected


def _int_at_least(n):
    return _rule(lambda v: not _number(v) or v >= n, f"an integer >= {n}")


def _float(test, expected):
    return _rule(lambda v: not _number(v) or test(v), f"a number {expected}")


def _one_of(*choices, case=True):
    def check(value):
        if value is None and None in choices:
            return None
        names = [c for c in choices if c is not None]
        ok = value in names if case else str(value).lower() in [c.lower() for c in names]
        return None if ok else "one of " + ", ".join(("~" if c is None else c) for c in choices)
    return check


def _list_of_positive_ints(value):
    values = value if isinstance(value, list) else [value]
    if not values or not all(_number(v) and isinstance(v, numbers.Integral) and v >= 1 for v in values):
        return "a positive integer or a non-empty list of positive integers"
    return None


def _interval(value):
    if value is None or re.fullmatch(r"\s*[\[(]\s*-?(\d+(\.\d*)?|inf)\s*,\s*-?(\d+(\.\d*)?|inf)\s*[\])]\s*", value):
        return None
    return "an interval such as '[5,inf)'"


def _gpu_id(value):
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return None if re.fullmatch(r"(\d+(,\d+)*)?", text.replace(" ", "")) else "'' (CPU) or GPU ids such as 0 or '0,1'"


def _port(value):
    return None if str(value).isdigit() and 1 <= int(value) <= 65535 else "a port number 1..65535"


def _metrics(value):
    for metric in [value] if isinstance(value, str) else value:
        if not isinstance(metric, str) or metric.lower() not in metric_types:
            return f"RecBole metric names (no metric {metric!r}{_did_you_mean(str(metric), _metric_names())})"
    return None


def _eval_args(value):
    if not isinstance(value, dict):
        return "a dict such as {split: {LS: valid_and_test}, order: TO, group_by: user, mode: full}"
    unknown = set(value) - {"split", "order", "group_by", "mode"}
    if unknown:
        return f"keys among split, order, group_by, mode (not {sorted(unknown)})"
    split = value.get("split", {"RS": [0.8, 0.1, 0.1]})
    if not (isinstance(split, dict) and len(split) == 1 and set(split) <= {"RS", "LS"}):
        return "split as {RS: [0.8, 0.1, 0.1]} or {LS: valid_and_test}"
    if "RS" in split and not (isinstance(split["RS"], list) and all(_number(x) and x >= 0 for x in split["RS"])
                              and sum(split["RS"]) > 0):
        return "split RS as a list of non-negative ratios such as [0.8, 0.1, 0.1]"
    if "LS" in split and split["LS"] not in ("valid_and_test", "test_only"):
        return "split LS as valid_and_test or test_only"
    if value.get("order", "RO") not in ("RO", "TO"):
        return "order RO or TO"
    if value.get("group_by", "user") not in ("user", "none", None):
        return "group_by user or none"
    mode = value.get("mode", "full")
    if not isinstance(mode, (str, dict)):
        return "mode as a string (full, uni100, pop100, labeled) or {valid: ..., test: ...}"
    return None


POSITIVE_INTS = (
    "epochs", "train_batch_size", "eval_batch_size", "stopping_step", "MAX_ITEM_LIST_LENGTH", "nproc",
    "num_levels", "code_dim", "cf_hidden_size", "cf_inner_size", "cf_n_layers", "cf_n_heads", "cf_epochs",
    "cf_batch_size", "tokenizer_epochs", "tokenizer_batch_size", "tokenizer_init_samples",
    "tokenizer_eval_interval", "text_encoder_batch_size", "text_encoder_max_length", "div_num_clusters",
    "div_cluster_interval", "beam_size", "beam_batch_size", "decode_workers", "length_buckets", "train_batches_per_epoch",
    "d_model", "d_ff", "num_heads", "d_kv", "num_encoder_layers", "num_decoder_layers", "lora_r",
    "relative_attention_num_buckets", "relative_attention_max_distance", "hidden_size", "n_heads",
    "embedding_size", "world_size",
)
NON_NEGATIVE_INTS = (
    "worker", "sinkhorn_iters", "max_resolve_rounds", "div_cluster_size_min", "div_cluster_size_max", "offset",
    "seed", "metric_decimal_place", "loss_decimal_place", "eval_step", "local_rank",
)
RULES = {
    **{key: _int_at_least(1) for key in POSITIVE_INTS},
    **{key: _int_at_least(0) for key in NON_NEGATIVE_INTS},
    "codebook_size": _int_at_least(2),
    **{key: _float(lambda v: v > 0, "> 0")
       for key in ("learning_rate", "tau", "cf_learning_rate", "tokenizer_lr", "initializer_factor", "time_budget")},
    **{key: _float(lambda v: v >= 0, ">= 0")
       for key in ("weight_decay", "alpha", "beta", "tokenizer_weight_decay", "tokenizer_commitment_weight",
                   "sinkhorn_epsilon", "lora_alpha")},
    **{key: _float(lambda v: 0 <= v < 1, "in [0, 1)")
       for key in ("dropout_prob", "cf_dropout_prob", "lora_dropout", "hidden_dropout_prob", "attn_dropout_prob")},
    **{key: _float(lambda v: 0 <= v <= 1, "in [0, 1]")
       for key in ("warmup_ratio", "tokenizer_warmup_ratio", "tokenizer_stop_collision_rate")},
    "topk": _list_of_positive_ints,
    "tokenizer_encoder_layers": _list_of_positive_ints,
    "amp_dtype": _one_of("bfloat16", "float16", None),
    "enable_amp": _rule(lambda v: v in (0, 1) or v == "auto", "True, False or auto"),
    "text_encoder_dtype": _one_of("float32", "float16", "bfloat16"),
    "llm_dtype": _one_of("float32", "bfloat16", "float16", None),
    "cf_loss_type": _one_of("CE", "BCE", "BPR", case=False),
    "cf_valid_metric": _one_of("ndcg@10", "recall@10", "loss", case=False),
    "tokenizer_lr_scheduler": _one_of("constant", "cosine"),
    "lr_scheduler": _one_of(None, "cosine"),
    "item_codes_collisions": _one_of(*COLLISION_RULES),
    "state": _one_of("INFO", "DEBUG", "WARNING", "ERROR", "CRITICAL", None, case=False),
    "rm_dup_inter": _one_of(None, "first", "last"),
    "user_inter_num_interval": _interval,
    "item_inter_num_interval": _interval,
    "gpu_id": _gpu_id,
    "port": _port,
    "metrics": _metrics,
    "eval_args": _eval_args,
    # RecBole's KD_DAGFM eval()s this text to pick its teacher network class: only those classes' names pass
    "teacher": _one_of("CrossNet", "CIN"),
}

# RecBole keys that save the filtered dataset / split loaders with pickle and load them back with pickle.load
UNPICKLING_KEYS = ("dataset_save_path", "dataloaders_save_path", "save_dataset", "save_dataloaders")

_EXPECTED = {"int": "an integer", "float": "a number", "bool": "a boolean (True or False)", "str": "a string",
             "list": "a list such as [a, b]", "dict": "a dict such as {k: v}", "tuple": "a comma list",
             "none": "~"}


def _expected_text(kinds):
    order = ["int", "float", "bool", "str", "list", "dict", "tuple", "none"]
    kinds = set(kinds)
    if "float" in kinds:
        kinds.discard("int")
    return " or ".join(_EXPECTED[k] for k in order if k in kinds)


def _did_you_mean(name, candidates, n=3):
    """`` (did you mean 'X'?)``-style suffix: a case-insensitive match first, then difflib's closest."""
    matches = [c for c in candidates if c.lower() == name.lower()]
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        matches = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)]
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?" if matches else ""


def _metric_names():
    return sorted(metric_types)


def check_value(key, value, source="--"):
    """Check one key and value; returns the value normalised (a tuple for a list key becomes a list, a
    number for a string-only key its text). ``source`` prefixes the message (``--`` on the command line,
    ``<file>: `` for a config file)."""
    keys = known_keys()
    where = "" if source == "--" else source
    if key not in keys:
        close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.75)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else \
            " (not a RecBole or recbole_letter setting; the keys are in properties/ and RecBole's properties/)"
        raise ConfigError(f"{where}unknown config key {key!r}{hint}")
    kinds = keys[key]
    shown = f"{where}{key}={value!r}"
    if key in UNPICKLING_KEYS and value not in (None, False, ""):
        raise ConfigError(f"{shown}: not supported: RecBole would unpickle saved dataset / dataloader files "
                          f"(unpickling can run code); the dataset is always built from the atomic files")
    kind = _kind(value)
    if kinds and kind != "other":  # "other": an object a Python caller passes (a Path, a numpy bool, ...)
        if kind == "tuple" and "list" in kinds and "tuple" not in kinds:
            value, kind = list(value), "list"
        if kind in ("int", "float") and kinds <= {"str", "none"}:
            value, kind = str(value), "str"
        ok = (kind in kinds
              or (kind == "int" and "float" in kinds)
              or (kind == "int" and "bool" in kinds and value in (0, 1)))
        if not ok:
            raise ConfigError(f"{shown}: expected {_expected_text(kinds)}")
    rule = RULES.get(key)
    if rule is not None and (value is not None or key in ("amp_dtype", "lr_scheduler", "state")):
        expected = rule(value)
        if expected and expected.startswith("one of "):  # the wording the consumers of these keys use too
            raise ConfigError(f"{where}{key} must be {expected}, got {value!r}")
        if expected:
            raise ConfigError(f"{shown}: expected {expected}")
    return value


def check_values(values, source="--"):
    """:func:`check_value` over a dict; the normalised dict."""
    return {key: check_value(key, value, source) for key, value in values.items()}


# keys RecBole itself sets while a run loads its data or builds its model (the sequence transforms, FM-style
# models): a checkpoint's stored config holds them, a user's config does not
RUNTIME_KEYS = frozenset({"MASK_INDEX", "MASK_ITEM_SEQ", "POS_ITEMS", "NEG_ITEMS", "INVERSE_ITEM_SEQ", "CROP_ITEM_SEQ",
                          "CROP_ITEM_SEQ_LEN", "REORDER_ITEM_SEQ", "feature_num"})


def check_stored_config(values, source):
    """:func:`check_value` over a checkpoint's stored config (its final values), ``RUNTIME_KEYS`` aside."""
    return check_values({key: value for key, value in values.items() if key not in RUNTIME_KEYS}, source)


def check_beam_size(config, model):
    """``beam_size >= max(topk)`` for a generative model. The model itself checks it when it is built
    (after the data is loaded); the command line checks it up front."""
    topk = config["topk"] or []
    if is_generative(model) and config["beam_size"] is not None and topk and config["beam_size"] < max(topk):
        raise ConfigError(f"beam_size={config['beam_size']!r}: expected an integer >= the largest topk "
                          f"({max(topk)}): beam search ranks beam_size items per user")


def check_final(config, model):
    """Checks across keys on the merged config (defaults, files, overrides): ``valid_metric`` must be one
    that the run computes (else RecBole fails with a KeyError after the first epoch)."""
    topk = config["topk"] or []
    valid_metric = config["valid_metric"]
    metrics = [m.lower() for m in config["metrics"] or []]
    if isinstance(valid_metric, str) and metrics:
        name, _, k = valid_metric.partition("@")
        if name.lower() not in metrics or (k and (not k.isdigit() or int(k) not in topk)):
            computed = [f"{m}@{t}" for m in config["metrics"] for t in topk]
            raise ConfigError(f"valid_metric={valid_metric!r}: expected a metric this run computes "
                              f"(metrics x topk: {', '.join(computed)})")


# ------------------------------------------------------------------------------------- models, datasets


@functools.lru_cache(maxsize=None)
def recbole_model_names():
    """RecBole's model class names that ``get_model_class`` finds (``<family>/<name lower>.py``)."""
    names = set()
    root = _recbole_dir() / "model"
    for family in RECBOLE_FAMILIES:
        for path in (root / family).glob("*.py"):
            for match in re.finditer(r"^class (\w+)\(", path.read_text(encoding="utf-8"), re.M):
                if match.group(1).lower() == path.stem:
                    names.add(match.group(1))
    return sorted(names)


def known_models():
    return sorted(GENERATIVE_MODELS) + sorted(ALIASES) + recbole_model_names()


def check_model_name(name):
    """``name`` exactly as a known model is spelled; else a :class:`ConfigError` with the closest names."""
    if not isinstance(name, str):
        return  # a model class
    if name in GENERATIVE_MODELS or name in ALIASES or canonical_name(name) in recbole_model_names():
        return
    hint = _did_you_mean(name, known_models())
    if hint:
        raise ConfigError(f"unknown model {name!r}{hint} (names are case-sensitive)")
    known = sorted(GENERATIVE_MODELS) + sorted(ALIASES) + BASELINES
    raise ConfigError(f"unknown model {name!r}; known here: {', '.join(known)} (or any RecBole model name)")


def known_datasets(data_path=None):
    """Datasets with a property file, the ones inside recbole, and folders of ``data_path`` holding a
    ``<name>/<name>.inter``."""
    names = {p.stem for p in (PROPERTIES_DIR / "dataset").glob("*.yaml")} | set(EMBEDDED_DATASETS)
    if data_path and os.path.isdir(data_path):
        for entry in os.listdir(data_path):
            if os.path.isfile(os.path.join(data_path, entry, f"{entry}.inter")):
                names.add(entry)
    return sorted(names)


def check_dataset(dataset, dataset_dir):
    """``dataset_dir`` is RecBole's ``config['data_path']`` (``<data_path>/<dataset>``): a
    :class:`ConfigError` with the closest known names when it has no ``<dataset>.inter``."""
    path = os.path.join(dataset_dir, f"{dataset}.inter")
    if os.path.isfile(path):
        return
    known = known_datasets(os.path.dirname(os.path.normpath(dataset_dir)))
    hint = _did_you_mean(dataset, [k for k in known if k != dataset]) or "."
    raise ConfigError(
        f"dataset {dataset!r} not found: no file {path}{hint} Known datasets: {', '.join(known)}; "
        "set data_path, or convert raw data with `python -m recbole_letter.data convert` (dataset/README.md)"
    )
