"""Trie-constrained generation shared by the generative recommenders (TIGER, LC-Rec)."""

from recbole_letter.generation.beam_search import constrained_beam_search
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
    "item_code_token_table",
    "PAD_TOKEN_ID",
    "EOS_TOKEN_ID",
    "FIRST_CODE_TOKEN",
]
