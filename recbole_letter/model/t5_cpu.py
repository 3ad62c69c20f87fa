"""Faster CPU training of ``transformers``' T5: the same model and the same math, cheaper kernels.

A profile of a release-size T5 training step on CPU (bfloat16 autocast, one thread) showed three costs
that are not the model's arithmetic:

* dropout's mask: ``torch.bernoulli_`` draws one 32-bit Mersenne-Twister number per element, 17-28 % of
  the step. :func:`fast_dropout` draws one float64 uniform number per *dropped* element (the geometric
  gaps between them, :func:`dropped_positions`), copies or scales its input in one pass and writes the
  zeros at those positions, the same in the backward pass; the feed-forward block applies the
  ``1 / (1 - p)`` scale to its 8x narrower output and, with ReLU, drops in the same pass as the ReLU
  (:class:`_ReluDropout`);
* the feed-forward block's cast of its ``[B, S, d_ff]`` activation to ``wo``'s float32 weight dtype
  (T5 keeps ``wo`` in float32 for float16 checkpoints): under autocast ``wo`` casts it straight back to
  bfloat16, two full copies of the largest tensor per layer, forward and backward. :class:`FeedForward`
  does not cast (autocast decides the matmul's dtype, as for every other linear layer);
* ``scaled_dot_product_attention`` (T5's default in ``transformers``) falls back to its unfused math
  path on CPU when the position bias needs a gradient, slower than a plain matmul-softmax-matmul
  (:func:`t5_attention`, T5's eager attention with :func:`fast_dropout`).

:func:`use_cpu_kernels` swaps these modules in place: parameter names, ``state_dict`` keys and
checkpoints stay those of ``T5ForConditionalGeneration``; in eval mode the outputs equal the original's up
to float rounding, in training mode only the random dropout masks differ. Their speed is measured in
docs/generation.md ("CPU kernels", ``benchmarks/training.py --cpu_kernels=0,1``). On other devices
:func:`fast_dropout` is ``torch.nn.functional.dropout``.

The dropout is not T5-specific: LETTER-LC-Rec's ``llm_cpu_kernels`` puts it into the LoRA layers
(:func:`use_fast_dropout`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.t5 import modeling_t5

ATTENTION_NAME = "letter_t5_cpu"


def dropped_positions(n, p, draws=None):
    """Flat indices (ascending, ``int64``) of the dropped elements among ``n``, each dropped independently
    with probability ``p``, from the default generator.

    The gaps between successive dropped elements are geometric: ``floor(log(1 - U) / log(1 - p))`` from
    float64 uniforms ``U``, one random number per *dropped* element instead of one per element (exact to
    float64 rounding). ``draws`` (gaps per round) is for tests; by default one round almost always
    suffices (6 standard deviations above the expected count), and further rounds continue the sequence.
    """
    if n == 0 or p == 0:  # p = 0: every gap would be infinite (log(1 - p) = 0)
        return torch.empty(0, dtype=torch.long)
    log_keep = math.log1p(-p)
    rounds, end = [], 0  # end: the first position not decided yet
    while end < n:
        left = n - end
        count = draws or int(left * p + 6 * math.sqrt(left * p * (1 - p)) + 16)
        steps = torch.empty(count, dtype=torch.float64).uniform_()  # U in [0, 1): log1p(-U) is finite
        steps = steps.neg_().log1p_().div_(log_keep).floor_().add_(1)  # gap + 1 >= 1
        positions = steps.cumsum_(0).add_(end - 1)  # float64 holds these integers exactly
        rounds.append(positions)
        end = int(positions[-1]) + 1
    positions = torch.cat(rounds) if len(rounds) > 1 else rounds[0]
    return positions[: int(torch.searchsorted(positions, float(n)))].long()  # ascending: cut at n


def _zero_at(x, positions, scale=None):
    """``x`` (times ``scale``) as a new contiguous tensor with the flat ``positions`` set to 0."""
    out = x.clone(memory_format=torch.contiguous_format) if scale is None else x.mul(scale).contiguous()
    out.view(-1).index_fill_(0, positions, 0)
    return out


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, scaled):
        positions = dropped_positions(x.numel(), p)
        ctx.save_for_backward(positions)
        ctx.scale = 1.0 / (1.0 - p) if scaled else None
        return _zero_at(x, positions, ctx.scale)

    @staticmethod
    def backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        return _zero_at(grad, positions, ctx.scale), None, None


class _ReluDropout(torch.autograd.Function):
    """``dropout(relu(x), p)`` without the ``1 / (1 - p)`` scale, in one pass plus the scattered zeros: the
    output is positive exactly where the gradient passes (ReLU active and not dropped), so ReLU's own
    backward on the output is the backward of both."""

    @staticmethod
    def forward(ctx, x, p):
        out = torch.relu(x).contiguous()
        out.view(-1).index_fill_(0, dropped_positions(out.numel(), p), 0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0), None


def fast_dropout(x, p, training=True, scaled=True):
    """``F.dropout(x, p, training)``, cheaper on CPU (same distribution, other random numbers), with no mask:
    one pass over ``x`` (the scale, or a copy) and zeros written at :func:`dropped_positions`, the same in
    the backward pass. ``scaled=False`` leaves out the ``1 / (1 - p)`` factor for a caller that applies
    it to a smaller tensor downstream (every layer in between linear without bias)."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return F.dropout(x, p, training) if scaled else F.dropout(x, p, training) * (1.0 - p)
    return _Dropout.apply(x, p, scaled)


def relu_dropout(x, p):
    """``fast_dropout(relu(x), p, scaled=False)`` in training, ReLU and dropout in one pass on CPU."""
    if x.device.type != "cpu" or p >= 1:
        return fast_dropout(torch.relu(x), p, scaled=False)
    return _ReluDropout.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`fast_dropout`."""

    def forward(self, x):
        return fast_dropout(x, self.p, self.training)


def t5_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None,
                 **kwargs):
    """T5's eager attention (``transformers`` attention-interface signature) with :func:`fast_dropout`."""
    scores = query @ key.transpose(2, 3)  # [B, H, S_q, S_k]
    if scaling is not None and scaling != 1.0:  # T5 does not scale (1.0)
        scores = scores * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = fast_dropout(torch.softmax(scores, dim=-1), dropout, module.training)
    return (weights @ value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTENTION_NAME, t5_attention)
# the additive float masks of T5's eager attention (an unregistered name would get no mask at all)
AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


class FeedForward(nn.Module):
    """T5's ``DenseReluDense`` (plain or gated) over the same ``wi``/``wi_0``/``wi_1``/``wo`` modules,
    without the cast of the activation to ``wo``'s weight dtype."""

    def __init__(self, original):
        super().__init__()
        self.gated = isinstance(original, modeling_t5.T5DenseGatedActDense)
        if self.gated:
            self.wi_0, self.wi_1 = original.wi_0, original.wi_1
        else:
            self.wi = original.wi
        self.wo = original.wo
        if self.wo.bias is not None:  # forward() moves dropout's scale past wo, exact only without a bias
            raise ValueError("FeedForward expects T5's bias-free wo")
        self.act = original.act
        self.relu = not self.gated and type(self.act) is nn.ReLU
        self.p = original.dropout.p  # dropout on the d_ff-wide activation, its scale after wo

    def forward(self, hidden):
        if not self.training or self.p == 0:
            return self.wo(self._activation(hidden))
        if self.relu:
            dropped = relu_dropout(self.wi(hidden), self.p)
        else:
            dropped = fast_dropout(self._activation(hidden), self.p, scaled=False)
        # wo has no bias: its output (d_model wide) takes dropout's scale, not the d_ff-wide activation
        return self.wo(dropped).mul_(1.0 / (1.0 - self.p))

    def _activation(self, hidden):
        if self.relu:  # in place: the d_ff-wide projection is a fresh tensor (ReLU's backward reads its output)
            return torch.relu_(self.wi(hidden))
        if self.gated:
            return self.act(self.wi_0(hidden)) * self.wi_1(hidden)
        return self.act(self.wi(hidden))


def use_fast_dropout(model):
    """Swap every ``nn.Dropout`` inside ``model`` for :class:`Dropout` (in place; no parameters change)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, Dropout(child.p))
    return model


def use_cpu_kernels(t5):
    """Swap a T5's dropout, feed-forward and attention for the cheaper CPU versions above (in place)."""
    for module in list(t5.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (modeling_t5.T5DenseActDense, modeling_t5.T5DenseGatedActDense)):
                setattr(module, name, FeedForward(child))
    use_fast_dropout(t5)
    if hasattr(modeling_t5, "eager_attention_forward"):  # T5 on the attention interface (transformers 5)
        t5.set_attn_implementation(ATTENTION_NAME)
    return t5
