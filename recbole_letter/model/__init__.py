"""Model names -> classes: our generative models first, RecBole's own models otherwise."""

import importlib
import importlib.util

# Imported on demand so that a baseline run never pays for transformers / peft.
GENERATIVE_MODELS = {
    "LETTER_TIGER": "recbole_letter.model.letter_tiger",
    "TIGER": "recbole_letter.model.letter_tiger",
    "LETTER_LC_Rec": "recbole_letter.model.letter_lc_rec",
    "LC_Rec": "recbole_letter.model.letter_lc_rec",
}
# A plain variant reads its LETTER model's property file first, then its own (only what differs).
PROPERTY_BASE = {"TIGER": "LETTER_TIGER", "LC_Rec": "LETTER_LC_Rec"}
# The paper's names for RecBole models.
ALIASES = {"MF": "BPR"}
RECBOLE_FAMILIES = [
    "general_recommender",
    "sequential_recommender",
    "context_aware_recommender",
    "knowledge_aware_recommender",
]
BASELINES = ["BPR", "Caser", "HGN", "BERT4Rec", "LightGCN", "SASRec"]


def canonical_name(name):
    return ALIASES.get(name, name)


def is_generative(name):
    return canonical_name(name) in GENERATIVE_MODELS


def get_model_class(name):
    """The model class for ``name``; a clear error listing known names when there is none."""
    name = canonical_name(name)
    if name in GENERATIVE_MODELS:
        return getattr(importlib.import_module(GENERATIVE_MODELS[name]), name)
    # RecBole's own get_model also probes exlib_recommender, which needs lightgbm/xgboost installed.
    for family in RECBOLE_FAMILIES:
        module = f"recbole.model.{family}.{name.lower()}"
        if importlib.util.find_spec(module) is not None:
            return getattr(importlib.import_module(module), name)
    known = sorted(GENERATIVE_MODELS) + sorted(ALIASES) + BASELINES
    raise ValueError(f"unknown model {name!r}; known here: {', '.join(known)} (or any RecBole model name)")
