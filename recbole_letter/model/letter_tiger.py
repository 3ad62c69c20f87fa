"""LETTER-TIGER and TIGER: a T5 encoder-decoder that generates the next item's code tokens.

Reference:
    Rajput et al. "Recommender Systems with Generative Retrieval" (TIGER), NeurIPS 2023.
    Wang et al. "Learnable Item Tokenization for Generative Recommendation" (LETTER), CIKM 2024.

Input = the code tokens of the last <= ``MAX_ITEM_LIST_LENGTH`` history items; target = the next item's
code tokens; loss = the ranking-guided cross-entropy of ``logits / tau``; ranking = trie-constrained
beam search. The two classes differ only in their settings (``properties/model/*.yaml``): LETTER_TIGER
uses the LETTER tokenizer (alpha, beta > 0) and the ranking-guided loss (tau 0.7), TIGER the plain
RQ-VAE (alpha = beta = 0) and the plain generation loss (tau 1.0).

The T5 is built from a ``transformers.T5Config`` (random init, no download); on a CPU its dropout,
feed-forward and attention modules are swapped for cheaper equivalents (``t5_cpu.py``). With
``torch_compile`` (for GPUs, whose eager step is bound by kernel launches) the T5's teacher-forced forward
(training, ``predict``) is compiled by ``torch.compile`` and sees every batch at its full, padded width
(static shapes). Decoding does not go through ``generate``: ``build_step_fn`` gives
``recbole_letter.generation.T5BeamDecoder``, a hand-written incremental T5 decoder that keeps the
cross-attention keys/values and the start token's self-attention keys/values once per **user** (broadcast to
the user's beams) and reorders only its own self-attention cache; it decodes the same lists as the T5's
forward on ``transformers``' own KV cache (``generation.t5_cache_step_fn``), faster (docs/generation.md,
"How TIGER decodes").
"""

import torch
from recbole.data.interaction import Interaction
from recbole.utils import InputType
from transformers import T5Config, T5ForConditionalGeneration

from recbole_letter.generation import T5BeamDecoder
from recbole_letter.model.generative_recommender import GenerativeRecommender
from recbole_letter.model.t5_cpu import use_cpu_kernels


class LETTER_TIGER(GenerativeRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset, item_codes):
        super().__init__(config, dataset, item_codes)
        # load parameters info
        self.d_model = config["d_model"]
        self.d_ff = config["d_ff"]
        self.num_heads = config["num_heads"]
        self.d_kv = config["d_kv"]
        self.num_encoder_layers = config["num_encoder_layers"]
        self.num_decoder_layers = config["num_decoder_layers"]
        self.dropout_prob = config["dropout_prob"]
        self.feed_forward_proj = config["feed_forward_proj"]
        self.relative_attention_num_buckets = config["relative_attention_num_buckets"]
        self.relative_attention_max_distance = config["relative_attention_max_distance"]
        self.initializer_factor = config["initializer_factor"]
        self.torch_compile = compile_settings(config)
        if self.torch_compile:
            if config["t5_cpu_kernels"]:
                raise ValueError("torch_compile cannot trace t5_cpu_kernels (their dropout draws a data-dependent "
                                 "number of random positions): set --t5_cpu_kernels=False, or leave it ~")
            # sub-batches would only split the batch: the compiled T5 sees the full width
            if config["length_buckets"] not in (None, 1):
                raise ValueError("torch_compile runs whole batches at their full width: set --length_buckets=1, "
                                 "or leave it ~")
            self.length_buckets = 1
        # ~: the CPU kernels on a CPU, unless the T5 is compiled (then transformers' modules, as on a GPU)
        self.t5_cpu_kernels = not self.torch_compile and self.cpu_kernels_setting(config["t5_cpu_kernels"],
                                                                                  config["device"])

        # define layers: T5 with pad = decoder start = 0, eos = 1, code tokens from 2
        t5_config = T5Config(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_ff=self.d_ff,
            d_kv=self.d_kv,
            num_heads=self.num_heads,
            num_layers=self.num_encoder_layers,
            num_decoder_layers=self.num_decoder_layers,
            dropout_rate=self.dropout_prob,
            feed_forward_proj=self.feed_forward_proj,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            relative_attention_max_distance=self.relative_attention_max_distance,
            initializer_factor=self.initializer_factor,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.pad_token_id,
        )
        self.t5 = T5ForConditionalGeneration(t5_config)
        if self.t5_cpu_kernels:  # same model and state_dict, cheaper dropout/feed-forward/attention on CPU
            use_cpu_kernels(self.t5)
        if self.torch_compile:  # in place: parameter names, state_dict and checkpoints stay the T5's
            self.t5.compile(**self.torch_compile)

    def _trim(self, tokens, mask):
        """Drop the all-padding columns at the end of a batch of left-aligned histories."""
        used = mask.any(dim=0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1
        return tokens[:, :width], mask[:, :width]

    def host_batch(self, interaction):
        """A training batch while it is still on the host (``LetterTrainer`` calls this before moving it
        to the device) -> a new batch with the histories cut to the batch's longest: free here, while
        finding that width on a GPU would wait for the device. Whole when the T5 is compiled (static shapes)."""
        if self.torch_compile:
            return interaction
        width = max(1, int(interaction[self.ITEM_SEQ_LEN].max()))
        return Interaction({**interaction.interaction, self.ITEM_SEQ: interaction[self.ITEM_SEQ][:, :width]})

    def forward_inputs(self, item_seq, item_seq_len):
        """The T5 encoder's input of the teacher-forced forward: history code tokens and mask ``[B, S]``,
        trimmed to the batch's longest history on a CPU. Elsewhere as given: the trim would wait for the
        device (training batches come cut on the host, :meth:`host_batch`), and at the full width when
        the T5 is compiled (static shapes: one graph instead of one per width). The padding is masked, so
        the outputs are the same either way."""
        tokens, mask = self.history_code_tokens(item_seq, item_seq_len)
        if self.torch_compile or tokens.device.type != "cpu":
            return tokens, mask
        return self._trim(tokens, mask)

    def code_logits(self, item_seq, item_seq_len, target_tokens):
        tokens, mask = self.forward_inputs(item_seq, item_seq_len)  # [B, S]
        start = torch.full_like(target_tokens[:, :1], self.pad_token_id)
        decoder_input = torch.cat([start, target_tokens[:, :-1]], dim=1)  # [B, T]
        output = self.t5(input_ids=tokens, attention_mask=mask.long(), decoder_input_ids=decoder_input,
                         use_cache=False)
        return output.logits  # [B, T, V]

    def build_step_fn(self, item_seq, item_seq_len, workspace=None):
        tokens, mask = self._trim(*self.history_code_tokens(item_seq, item_seq_len))
        return T5BeamDecoder(self.t5, tokens, mask, self.pad_token_id, max_steps=self.code_len, workspace=workspace)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_settings(config):
    """``torch_compile`` (bool), ``torch_compile_mode`` and ``torch_compile_backend`` (``~`` = ``torch.compile``'s
    own defaults: mode ``default``, backend ``inductor``), as ``transformers``' ``TrainingArguments`` name
    them -> the keyword arguments of ``torch.compile``, or ``None`` when the T5 runs eagerly. A mode is
    inductor's: another backend with a mode is an error (``torch.compile`` would only warn). Shapes are
    static (``dynamic=False``): an epoch's last, smaller batch gets a graph of its own, where
    ``torch.compile`` would retrace the forward with a symbolic batch size at the second size it meets and
    run every later batch through that graph."""
    if not config["torch_compile"]:
        return None
    backend, mode = config["torch_compile_backend"] or "inductor", config["torch_compile_mode"]
    settings = {"backend": backend, "dynamic": False}
    if backend != "inductor":
        if mode is not None:
            raise ValueError(f"torch_compile_mode is a setting of the inductor backend, not of {backend!r}")
        return settings
    mode = mode or "default"
    if mode not in COMPILE_MODES:
        raise ValueError(f"torch_compile_mode must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")
    return {**settings, "mode": mode}


class TIGER(LETTER_TIGER):
    """TIGER: the same generator on plain RQ-VAE codes (``alpha: 0``, ``beta: 0`` in its YAML)."""
