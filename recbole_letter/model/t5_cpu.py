"""Faster CPU training of ``transformers``' T5: the same model and the same math, cheaper kernels.

A profile of a release-size T5 training step on CPU (bfloat16 autocast, one thread) showed three costs
that are not the model's arithmetic:

* dropout's mask: ``torch.bernoulli_`` draws one 32-bit Mersenne-Twister number per element, 17-28 % of
  the step. :func:`fast_dropout` draws 64-bit words and uses each as two 32-bit uniform numbers (a drop
  probability exact to 2^-32), keeps a ``bool`` mask for the backward pass and selects instead of
  multiplying; the feed-forward block applies the ``1 / (1 - p)`` scale to its 8x narrower output;
* the feed-forward block's cast of its ``[B, S, d_ff]`` activation to ``wo``'s float32 weight dtype
  (T5 keeps ``wo`` in float32 for float16 checkpoints): under autocast ``wo`` casts it straight back to
  bfloat16, two full copies of the largest tensor per layer, forward and backward. :class:`FeedForward`
  does not cast (autocast decides the matmul's dtype, as for every other linear layer);
* ``scaled_dot_product_attention`` (T5's default in ``transformers``) falls back to its unfused math
  path on CPU when the position bias needs a gradient, slower than a plain matmul-softmax-matmul
  (:func:`t5_attention`, T5's eager attention with :func:`fast_dropout`).

:func:`use_cpu_kernels` swaps these modules in place: parameter names, ``state_dict`` keys and
checkpoints stay those of ``T5ForConditionalGeneration``; in eval mode the outputs equal the original's up
to float rounding, in training mode only the random dropout masks differ. A release-size training step
on Beauty batches is ~1.4x faster under bfloat16 autocast (1.30x, then 1.11x from a second round)
and 1.28x in float32 (``benchmarks/training.py --cpu_kernels=0,1``, docs/generation.md). On other devices
:func:`fast_dropout` is ``torch.nn.functional.dropout``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.t5 import modeling_t5

ATTENTION_NAME = "letter_t5_cpu"


def dropout_mask(shape, p, device=None):
    """A ``bool`` mask of ``shape``, each element True (dropped) with probability ``p`` (to 2^-32), from
    the default generator: each 64-bit word of ``random_`` over the full int64 range serves two elements,
    its two 32-bit halves (each uniform over the int32 range), compared with one threshold."""
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int64, device=device).random_(-(2**63), None)
    return words.view(torch.int32)[:n].view(shape) < round(p * 2**32) - 2**31


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, scaled):
        dropped = dropout_mask(x.shape, p, x.device)
        ctx.save_for_backward(dropped)
        ctx.scale = 1.0 / (1.0 - p) if scaled else None
        return _apply(dropped, x, ctx.scale)

    @staticmethod
    def backward(ctx, grad):
        (dropped,) = ctx.saved_tensors
        return _apply(dropped, grad, ctx.scale), None, None


def _apply(dropped, x, scale):
    out = torch.where(dropped, 0, x)  # one pass (masked_fill out of place is a copy, then the fill)
    return out if scale is None else out.mul_(scale)


def fast_dropout(x, p, training=True, scaled=True):
    """``F.dropout(x, p, training)`` with a cheaper mask on CPU (same distribution, other random numbers).
    ``scaled=False`` leaves out the ``1 / (1 - p)`` factor (one pass over ``x``) for a caller that applies
    it to a smaller tensor downstream (every layer in between linear without bias)."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return F.dropout(x, p, training) if scaled else F.dropout(x, p, training) * (1.0 - p)
    return _Dropout.apply(x, p, scaled)


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
        self.p = original.dropout.p  # dropout on the d_ff-wide activation, its scale after wo

    def forward(self, hidden):
        if self.gated:
            hidden = self.act(self.wi_0(hidden)) * self.wi_1(hidden)
        else:
            hidden = self.act(self.wi(hidden))
        if not self.training or self.p == 0:
            return self.wo(hidden)
        # wo has no bias: its output (d_model wide) takes dropout's scale, not the d_ff-wide activation
        return self.wo(fast_dropout(hidden, self.p, scaled=False)).mul_(1.0 / (1.0 - self.p))


def use_cpu_kernels(t5):
    """Swap a T5's dropout, feed-forward and attention for the cheaper CPU versions above (in place)."""
    for module in list(t5.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (modeling_t5.T5DenseActDense, modeling_t5.T5DenseGatedActDense)):
                setattr(module, name, FeedForward(child))
            elif type(child) is nn.Dropout:
                setattr(module, name, Dropout(child.p))
    if hasattr(modeling_t5, "eager_attention_forward"):  # T5 on the attention interface (transformers 5)
        t5.set_attn_implementation(ATTENTION_NAME)
    return t5
