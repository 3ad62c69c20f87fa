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
(static shapes). Decoding does not go through ``generate``: ``_T5BeamDecoder`` runs the encoder once per
batch, computes every decoder layer's cross-attention keys/values, and the self-attention keys/values of the
start token, once per **user** (broadcast to the user's beams instead of copied per beam) and keeps the
later positions' self-attention cache reordered by ``beam_origin``, in buffers reused from chunk to chunk.
"""

import math

import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction
from recbole.utils import InputType
from transformers import T5Config, T5ForConditionalGeneration

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
        return _T5BeamDecoder(self.t5, tokens, mask, self.pad_token_id, max_steps=self.code_len, workspace=workspace)


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


class _T5BeamDecoder:
    """The beam-search ``step_fn`` of a ``T5ForConditionalGeneration`` (eval mode, no dropout).

    Mirrors the T5 decoder stack step by step: pre-norm self-attention with the first layer's
    relative position bias (unscaled dot products, as T5), cross-attention, ReLU/gated feed-forward,
    final norm, output scaling when embeddings are tied, ``lm_head``. Equal to the teacher-forced
    ``T5ForConditionalGeneration`` forward up to float rounding (tested).

    ``workspace`` (a dict, see ``GenerativeRecommender.generate_items``) keeps the self-attention cache's
    two buffers for the next decoder of the same ``generate_items`` call: at release size and 64 users
    per chunk they are 79 MB each, which the CPU allocator would otherwise map afresh from the operating
    system for every chunk and fault in page by page (about 15 % of the decoding time on Beauty, 2 threads).
    """

    def __init__(self, t5, input_ids, attention_mask, decoder_start_token_id, max_steps, workspace=None):
        self.t5 = t5
        self.n_heads = t5.config.num_heads
        self.d_kv = t5.config.d_kv
        self.start_token = decoder_start_token_id
        self.max_steps = max_steps
        self.workspace = {} if workspace is None else workspace
        self.scale = t5.config.d_model ** -0.5 if getattr(t5.config, "scale_decoder_outputs", True) else 1.0
        encoded = t5.encoder(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state
        self.batch_size, source_len, _ = encoded.shape  # [B, S, d]
        self.cross_kv = []  # per decoder layer: (keys^T, values), shared by a user's beams
        self.qkv_weight = []  # per decoder layer: self-attention q, k, v projections fused [3 * H * d_kv, d]
        for block in t5.decoder.block:
            attention = block.layer[1].EncDecAttention
            keys = attention.k(encoded).view(self.batch_size, source_len, self.n_heads, self.d_kv)
            values = attention.v(encoded).view(self.batch_size, source_len, self.n_heads, self.d_kv)
            # laid out once for the per-step products: keys^T [B, H, d_kv, S], values [B, H, S, d_kv]
            self.cross_kv.append((keys.permute(0, 2, 3, 1).contiguous(), values.transpose(1, 2).contiguous()))
            own = block.layer[0].SelfAttention
            self.qkv_weight.append(torch.cat([own.q.weight, own.k.weight, own.v.weight]))
        neg = torch.finfo(encoded.dtype).min
        self.cross_bias = torch.zeros(attention_mask.shape, dtype=encoded.dtype, device=encoded.device)
        self.cross_bias = self.cross_bias.masked_fill(~attention_mask.bool(), neg)[:, None, None, :]  # [B,1,1,S]
        # self-attention keys/values, in the dtype of the projections (autocast's): position 0 (the start token)
        # per user, shared by the user's beams, [n_layers, B, 2, H, d_kv]; positions 1.. per beam,
        # [max_steps - 1, n_layers, R, 2, H, d_kv] (positions first: the filled ones are one contiguous block;
        # a position's keys and values are one contiguous row per beam), in the workspace buffer named
        # cache_names[0]; beam reordering writes into the other one, which then becomes the cache
        self.first_kv = None
        self.self_cache = None
        self.cache_names = ["self_cache_a", "self_cache_b"]
        self.position = 0

    def __call__(self, last_tokens, beam_origin):
        decoder = self.t5.decoder
        if last_tokens is None:
            last_tokens = torch.full((self.batch_size,), self.start_token, dtype=torch.long,
                                     device=self.cross_bias.device)
        else:
            if self.position >= self.max_steps:
                raise ValueError(f"the decoder was built for {self.max_steps} steps")
            self._follow_beams(beam_origin)
        rows = last_tokens.shape[0]
        beams = rows // self.batch_size
        step = self.position
        hidden = decoder.embed_tokens(last_tokens)  # [R, d]
        position_bias = decoder.block[0].layer[0].SelfAttention.compute_bias(
            1, step + 1, device=hidden.device, past_seen_tokens=step)[0, :, 0].T  # [t+1, H]
        for i, block in enumerate(decoder.block):
            # self-attention over this beam's tokens so far
            attention = block.layer[0].SelfAttention
            qkv = F.linear(rms_norm(block.layer[0].layer_norm, hidden), self.qkv_weight[i])
            qkv = qkv.view(rows, 3, self.n_heads, self.d_kv)
            if step == 0:
                if self.first_kv is None:
                    self.first_kv = qkv.new_empty((len(decoder.block), rows, 2, self.n_heads, self.d_kv))
                self.first_kv[i] = qkv[:, 1:]
            else:
                self.self_cache[step - 1, i] = qkv[:, 1:]  # this step's keys, values
            cache = self.self_cache[:step, i].unbind(0) if step else ()
            hidden = hidden + attention.o(self._attend(qkv[:, 0], self.first_kv[i], cache, position_bias))
            # cross-attention: the user's encoder keys/values broadcast over its beams
            attention = block.layer[1].EncDecAttention
            query = attention.q(rms_norm(block.layer[1].layer_norm, hidden))
            query = query.view(self.batch_size, beams, self.n_heads, self.d_kv).transpose(1, 2)
            keys, values = self.cross_kv[i]
            weights = torch.softmax((query @ keys).add_(self.cross_bias), dim=-1)  # [B, H, k, S]
            attended = (weights @ values).transpose(1, 2).reshape(rows, -1)  # [R, H * d_kv]
            hidden = hidden + attention.o(attended)
            # feed-forward (pre-norm, residual; no dropout in eval mode)
            feed_forward = block.layer[2]
            hidden = hidden + feed_forward.DenseReluDense(rms_norm(feed_forward.layer_norm, hidden))
        hidden = rms_norm(decoder.final_layer_norm, hidden) * self.scale
        self.position += 1
        return self.t5.lm_head(hidden)  # [R, V]

    def _attend(self, query, first, cache, position_bias):
        """Self-attention of one query per beam, ``query [R, H, d_kv]``, over the beam's ``t+1`` positions:
        position 0 from ``first [B, 2, H, d_kv]`` (keys, values of the user's start token), positions 1..t from
        ``cache`` (``t`` tensors ``[R, 2, H, d_kv]``) -> ``[R, H * d_kv]``. A position at a time, as elementwise
        products and sums: no ``[t+1, R, H, d_kv]`` temporaries, and cheaper than ``t+1``-column matmuls."""
        rows = query.shape[0]
        per_user = query.view(self.batch_size, -1, self.n_heads, self.d_kv)  # [B, k, H, d_kv]
        scores = [(per_user * first[:, None, 0]).sum(-1).view(rows, -1)]
        scores += [(kv[:, 0] * query).sum(-1) for kv in cache]
        weights = torch.softmax(torch.stack(scores) + position_bias.unsqueeze(1), dim=0).unsqueeze(-1)  # [t+1,R,H,1]
        attended = (first[:, None, 1] * weights[0].view(self.batch_size, -1, self.n_heads, 1)).view(query.shape)
        for kv, weight in zip(cache, weights[1:]):
            attended.addcmul_(kv[:, 1], weight)
        return attended.flatten(1)

    def _follow_beams(self, beam_origin):
        """Reorder the filled positions of the per-beam self-attention cache by ``beam_origin`` (one pass, into
        the spare buffer, which then becomes the cache; the rows grow from B to B * k on the first call, when
        the cache is still empty: position 0 is the user's)."""
        filled, rows = self.position - 1, beam_origin.shape[0]
        shape = (self.max_steps - 1, *self.first_kv.shape[:1], rows, *self.first_kv.shape[2:])
        spare = workspace_buffer(self.workspace, self.cache_names[1], shape, self.first_kv)
        if filled:
            torch.index_select(self.self_cache[:filled], 2, beam_origin, out=spare[:filled])
        self.self_cache = spare
        self.cache_names.reverse()


def rms_norm(norm, hidden):
    """``T5LayerNorm`` ``norm`` applied to ``hidden``: one fused ``F.rms_norm`` (the same root mean square
    scaling, 2x faster on CPU) when ``hidden`` has the weight's dtype, else the module (with T5's casts)."""
    if norm.weight.dtype != hidden.dtype:
        return norm(hidden)
    return F.rms_norm(hidden, norm.weight.shape, norm.weight, norm.variance_epsilon)


def workspace_buffer(workspace, name, shape, like):
    """An uninitialised tensor of ``shape`` (``like``'s dtype and device) on the storage of ``workspace[name]``,
    which is (re)allocated only when it is too small or of another dtype or device."""
    flat = workspace.get(name)
    size = math.prod(shape)
    if flat is None or flat.numel() < size or flat.dtype != like.dtype or flat.device != like.device:
        flat = workspace[name] = like.new_empty(size)
    return flat[:size].view(shape)
