"""LETTER (learnable item tokenizer for generative recommendation, CIKM 2024) inside RecBole."""

from recbole_letter import compat

compat.apply()

__version__ = "0.1.0"
