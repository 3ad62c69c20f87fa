"""Trie-constrained generation shared by the generative recommenders (TIGER, LC-Rec), and the T5's
beam-search step functions (``t5_decoder.py``)."""

from recbole_letter.generation.beam_search import constrained_beam_search
from recbole_letter.generation.t5_decoder import T5BeamDecoder, t5_cache_step_fn
from recbole_letter.generation.trie import (
    EOS_TOKEN_ID,
    FIRST_CODE_TOKEN,
    PAD_TOKEN_ID,
    CodeTrie,
    item_code_token_table,
)

__all__ = [
    "CodeTrie",
    "constrained_beam_search",
    "T5BeamDecoder",
    "t5_cache_step_fn",
    "item_code_token_table",
    "PAD_TOKEN_ID",
    "EOS_TOKEN_ID",
    "FIRST_CODE_TOKEN",
]
