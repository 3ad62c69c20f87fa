"""The beam-search step functions of a ``transformers`` ``T5ForConditionalGeneration`` (LETTER-TIGER, TIGER).

Both follow ``constrained_beam_search``'s ``step_fn`` contract (``beam_search.py``) and give the same lists:

* :class:`T5BeamDecoder`, the one decoding uses (``LETTER_TIGER.build_step_fn``): a hand-written incremental
  T5 decoder that keeps what a user's beams share once per user (encoder outputs' cross-attention
  keys/values, the start token's self-attention keys/values) and reorders only its own compact
  self-attention cache, in buffers reused from chunk to chunk; its encoder (:func:`encode_by_length`)
  is the T5's, computed with fused attention on groups of users of similar history length;
* :func:`t5_cache_step_fn`: the T5's own forward on ``transformers``' KV cache (``EncoderDecoderCache``),
  as ``generate`` decodes. The reference :class:`T5BeamDecoder` is pinned against (tests/test_tiger.py) and
  timed against (``benchmarks/t5_decoders.py``): the hand-written decoder stays only while it is >= 1.5x
  faster at identical lists (docs/generation.md, "How TIGER decodes").
"""

import inspect
import math

import torch
import torch.nn.functional as F
from transformers import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

# users per encoder call in T5BeamDecoder: enough rows for efficient matmuls, few enough for little padding
ENCODER_GROUP = 16


class T5BeamDecoder:
    """The beam-search ``step_fn`` of a ``T5ForConditionalGeneration`` (eval mode, no dropout).

    Mirrors the T5 decoder stack step by step: pre-norm self-attention with the first layer's
    relative position bias (unscaled dot products, as T5), cross-attention, ReLU/gated feed-forward,
    final norm, output scaling when embeddings are tied, ``lm_head``. Equal to the teacher-forced
    ``T5ForConditionalGeneration`` forward up to float rounding (tested).

    ``workspace`` (a dict, see ``GenerativeRecommender.generate_items``) keeps the self-attention cache's
    two buffers for the next decoder that the same thread of a ``generate_items`` call builds (each of its
    decoding threads has its own): large buffers that the CPU
    allocator would otherwise map afresh from the operating system for every chunk and fault in page by
    page (docs/generation.md, "How TIGER decodes").

    Args:
        t5: the ``T5ForConditionalGeneration`` (eval mode).
        input_ids: LongTensor ``[B, S]``, the users' histories as tokens.
        attention_mask: ``[B, S]``, 1 on real tokens.
        decoder_start_token_id: the first decoder input.
        max_steps: the most decoder steps a call sequence will take (the cache's length).
        workspace: a dict shared by the decoders one thread of a ``generate_items`` call builds, or ``None``.

    Called as ``step(last_tokens, beam_origin)`` (``None, None`` first), it returns the next token's
    logits, ``[B, V]`` on the first call and ``[B * k, V]`` after: the ``step_fn`` of
    ``constrained_beam_search``.
    """

    def __init__(self, t5, input_ids, attention_mask, decoder_start_token_id, max_steps, workspace=None):
        self.t5 = t5
        self.n_heads = t5.config.num_heads
        self.d_kv = t5.config.d_kv
        self.start_token = decoder_start_token_id
        self.max_steps = max_steps
        self.workspace = {} if workspace is None else workspace
        self.scale = t5.config.d_model ** -0.5 if getattr(t5.config, "scale_decoder_outputs", True) else 1.0
        encoded = encode_by_length(t5, input_ids, attention_mask)
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


def encoder_qkv_weights(t5):
    """Each encoder layer's q, k and v projections as one ``[3 * H * d_kv, d]`` weight (:func:`encode`)."""
    return [torch.cat([b.layer[0].SelfAttention.q.weight, b.layer[0].SelfAttention.k.weight,
                       b.layer[0].SelfAttention.v.weight]) for b in t5.encoder.block]


def encode(t5, input_ids, attention_mask, qkv_weights=None):
    """The T5 encoder's last hidden states ``[B, S, d]`` of ``input_ids [B, S]`` (``attention_mask``: 1 on real
    tokens), as ``t5.encoder`` computes them in eval mode, with fewer passes over memory: q/k/v as one fused
    matmul, the relative position bias and the padding mask added once (all layers share them, as in T5) and
    attention as one fused ``scaled_dot_product_attention`` (unscaled, as T5), so no ``[B, H, S, S]`` scores
    are written and read back per layer. ``qkv_weights``: :func:`encoder_qkv_weights`, made once for many calls."""
    encoder = t5.encoder
    qkv_weights = encoder_qkv_weights(t5) if qkv_weights is None else qkv_weights
    batch_size, source_len = input_ids.shape
    n_heads, d_kv = t5.config.num_heads, t5.config.d_kv
    hidden = encoder.embed_tokens(input_ids)  # [B, S, d]
    position_bias = encoder.block[0].layer[0].SelfAttention.compute_bias(source_len, source_len, device=hidden.device)
    neg = torch.finfo(hidden.dtype).min
    padding = torch.zeros(attention_mask.shape, dtype=hidden.dtype, device=hidden.device)
    padding = padding.masked_fill(~attention_mask.bool(), neg)[:, None, None, :]  # [B, 1, 1, S]
    # contiguous before the sum: compute_bias returns a permuted view, whose layout the sum would inherit
    bias = position_bias.to(hidden.dtype).contiguous() + padding  # [B, H, S, S]
    for block, qkv_weight in zip(encoder.block, qkv_weights):
        attention = block.layer[0].SelfAttention
        qkv = F.linear(rms_norm(block.layer[0].layer_norm, hidden), qkv_weight)
        query, key, value = qkv.view(batch_size, source_len, 3, n_heads, d_kv).transpose(1, 3).unbind(2)  # [B, H, S, d_kv]
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype), scale=1.0)
        hidden = hidden + attention.o(attended.transpose(1, 2).reshape(batch_size, source_len, -1))
        feed_forward = block.layer[1]
        hidden = hidden + feed_forward.DenseReluDense(rms_norm(feed_forward.layer_norm, hidden))
    return rms_norm(encoder.final_layer_norm, hidden)


def encode_by_length(t5, input_ids, attention_mask, group_size=ENCODER_GROUP):
    """:func:`encode` of ``input_ids [B, S]`` in groups of ``group_size`` users of similar history length, each
    group cut to its own longest history -> ``[B, S, d]``, zeros past each group's width. Every real position
    gets what a whole-batch encoding gives it (padding is masked in both); the positions past a group's width
    are padding, which the cross-attention masks. Spares the multiply-adds on padding that one width for all
    ``B`` users costs when their history lengths spread."""
    positions = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device)
    widths = (attention_mask.long() * positions).amax(dim=1).clamp(min=1)  # [B] last real position + 1
    order = torch.argsort(widths, stable=True)
    qkv_weights = encoder_qkv_weights(t5)
    encoded = None
    for rows in order.split(group_size):
        width = int(widths[rows].max())
        part = encode(t5, input_ids[rows, :width], attention_mask[rows, :width], qkv_weights)  # [g, width, d]
        if encoded is None:
            encoded = part.new_zeros((input_ids.shape[0], input_ids.shape[1], part.shape[-1]))
        encoded[rows, :width] = part
    return encoded


def rms_norm(norm, hidden):
    """``T5LayerNorm`` ``norm`` applied to ``hidden``: one fused ``F.rms_norm`` (the same root mean square
    scaling, fewer passes over memory) when ``hidden`` has the weight's dtype, else the module (with T5's casts)."""
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


def t5_cache_step_fn(t5, input_ids, attention_mask, decoder_start_token_id):
    """The beam-search ``step_fn`` of a ``T5ForConditionalGeneration`` on its own KV cache (an
    ``EncoderDecoderCache``), as ``generate`` decodes: call 0 runs the encoder on the ``B`` users' histories
    (``input_ids``, ``attention_mask [B, S]``) and the decoder on the start token; every later call reorders
    the self-attention cache by ``beam_origin`` and feeds the chosen tokens. The cross-attention keys/values
    and the encoder outputs expand with the beams (``B`` -> ``B * k`` rows after call 0) and are otherwise
    left alone: all of a user's rows hold the same, so reordering them (as ``generate`` does) copies
    ``[B * k, H, S, d_kv]`` per layer per step for nothing.

    Args:
        t5: the ``T5ForConditionalGeneration`` (eval mode).
        input_ids: LongTensor ``[B, S]``; attention_mask: ``[B, S]``, 1 on real tokens.
        decoder_start_token_id: the first decoder input.

    Returns:
        ``step(last_tokens, beam_origin)``, the same ``step_fn`` interface as :class:`T5BeamDecoder`.
    """
    cache_kwarg = "cache" if "cache" in inspect.signature(type(t5).forward).parameters else "past_key_values"
    batch_size = input_ids.shape[0]
    state = {}

    def step(last_tokens, beam_origin):
        if last_tokens is None:
            encoded = t5.encoder(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state
            state.update(encoded=encoded, rows=(encoded, attention_mask.long()),
                         cache=EncoderDecoderCache(DynamicCache(), DynamicCache()))
            decoder_input = input_ids.new_full((batch_size, 1), decoder_start_token_id)
        else:
            cache = state["cache"]
            cache.self_attention_cache.reorder_cache(beam_origin)
            # a user's rows of the encoder outputs (and of the cross-attention cache built from them) are all
            # the same and beam_origin never crosses users: they follow the beams only when their number changes
            if state["rows"][0].shape[0] != beam_origin.shape[0]:  # rows are user-major: user of row r = r // k
                cache.cross_attention_cache.reorder_cache(beam_origin)
                beams = beam_origin.shape[0] // batch_size
                state["rows"] = (state["encoded"].repeat_interleave(beams, 0),
                                 attention_mask.long().repeat_interleave(beams, 0))
            decoder_input = last_tokens.unsqueeze(1)
        encoded, mask = state["rows"]
        output = t5(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), attention_mask=mask,
                    decoder_input_ids=decoder_input, use_cache=True, **{cache_kwarg: state["cache"]})
        return output.logits[:, -1]  # [R, V]

    return step
