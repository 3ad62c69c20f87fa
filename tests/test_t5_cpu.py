"""The CPU kernels of ``recbole_letter.model.t5_cpu``: dropout with the right distribution and gradient,
and a T5 that is the same model (weights, state_dict, outputs) with them swapped in."""

import copy
import math
from unittest import mock

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_letter.model.t5_cpu import ATTENTION_NAME, FeedForward, dropped_positions, fast_dropout, use_cpu_kernels
from numerics import assert_as_accurate_as, float32_tolerance, rms_error
from test_tiger import histories

VOCAB = 14


@pytest.mark.parametrize("draws", [None, 3])  # 3: many rounds of gaps, each continuing the last
def test_dropped_positions_are_independent_bernoulli_draws(draws):
    torch.manual_seed(0)
    runs = 4000
    dropped = torch.zeros(runs, 12, dtype=torch.bool)
    for run in range(runs):
        positions = dropped_positions(12, 0.3, draws)
        assert positions.dtype == torch.long and bool((positions.diff() > 0).all())
        dropped[run, positions] = True  # an index >= 12 would raise
    rate = dropped.float().mean(0)
    assert (rate - 0.3).abs().max() < 0.04  # every position at rate p (~5 standard errors)
    both = (dropped[:, :-1] & dropped[:, 1:]).float().mean()
    assert abs(both - 0.09) < 0.01  # neighbours independent: p^2
    counts = torch.bincount(dropped.sum(1), minlength=13).double()
    expected = torch.tensor([math.comb(12, k) * 0.3**k * 0.7 ** (12 - k) for k in range(13)]) * runs
    chi2 = ((counts - expected) ** 2 / expected)[:9].sum()  # counts 0-8 (enough expected per cell)
    assert chi2 < 27.9  # 9 cells: p = 0.001 under the binomial distribution
    assert len(dropped_positions(0, 0.3)) == 0 and len(dropped_positions(12, 0.0)) == 0
    assert abs(len(dropped_positions(10**6, 0.1)) - 10**5) < 1500  # 5 standard deviations


def test_fast_dropout_rate_scale_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(1000, 1001, requires_grad=True)
    out = fast_dropout(x, 0.1)
    dropped = out == 0
    for part in dropped.flatten().chunk(2):  # the rate holds all along the tensor
        assert abs(part.float().mean().item() - 0.1) < 0.002  # ~5 standard errors
    torch.testing.assert_close(out[~dropped], torch.full_like(out[~dropped], 1 / 0.9))
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach())  # d out / d x = mask * 1 / (1 - p)
    assert fast_dropout(x, 0.1, training=False) is x and fast_dropout(x, 0.0) is x
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(x, 0.1), out)  # the default generator: seeded runs repeat
    transposed = fast_dropout(x.detach().t(), 0.1, scaled=False)  # strided input: positions of its layout
    assert transposed.shape == (1001, 1000) and abs(transposed.eq(0).float().mean().item() - 0.1) < 0.002
    assert fast_dropout(torch.ones(2, 3), 1.0).eq(0).all()


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_feed_forward_scales_after_wo_as_dropout_before_it(feed_forward_proj):
    # the 1 / (1 - p) moved past the bias-free wo (and, for ReLU, ReLU and dropout in one Function): the
    # same output and gradients as dropout's usual order
    original = t5_pair(feed_forward_proj, dropout_rate=0.3)[0].encoder.block[0].layer[-1].DenseReluDense
    fast = FeedForward(original).train()
    assert fast.relu == (feed_forward_proj == "relu")
    hidden = torch.randn(3, 5, 32, requires_grad=True)
    torch.manual_seed(1)
    out = fast(hidden)
    torch.manual_seed(1)
    dropped = torch.zeros(3 * 5 * 64, dtype=torch.bool)
    dropped[dropped_positions(3 * 5 * 64, 0.3)] = True
    assert 0 < dropped.sum() < dropped.numel()

    def usual_order(module, hidden):  # dropout(activation) -> wo, with the same dropped elements
        return module.wo(FeedForward(module)._activation(hidden).masked_fill(dropped.view(3, 5, 64), 0) / 0.7)

    expected = usual_order(original, hidden)
    hidden64 = hidden.detach().double().requires_grad_()
    exact = usual_order(copy.deepcopy(original).double(), hidden64)  # float64: the rounding-free values
    # the scale rounds after wo, not before: both float32 orders as close to the exact values
    assert_as_accurate_as(out, expected, exact, "output")
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=float32_tolerance(exact, 64, steps=2))
    (grad,) = torch.autograd.grad(out.square().sum(), hidden)
    (grad_exact,) = torch.autograd.grad(exact.square().sum(), hidden64)
    assert_as_accurate_as(grad, torch.autograd.grad(expected.square().sum(), hidden)[0], grad_exact, "gradient")
    torch.testing.assert_close(grad.double(), grad_exact, rtol=0, atol=float32_tolerance(grad_exact, 64, steps=4))  # wi, wo, back
    # eval: T5's own operations in T5's order (no dropout, no scale), so bitwise the same
    assert torch.equal(fast.eval()(hidden), original.eval()(hidden))


def t5_pair(feed_forward_proj, dropout_rate, initializer_factor=5.0):
    """The same random T5 twice: as ``transformers`` builds it, and with the CPU kernels."""
    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                      num_decoder_layers=2, dropout_rate=dropout_rate, feed_forward_proj=feed_forward_proj,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      initializer_factor=initializer_factor)
    original = T5ForConditionalGeneration(config)
    return original, use_cpu_kernels(copy.deepcopy(original))


# the longest chain of reductions from the tokens to the logits: per encoder block the attention's q/k/v,
# scores, weights @ v and o, the feed-forward's wi and wo, two RMS norms (8); per decoder block two
# attentions and a feed-forward (13); two final norms and the LM head: 2 * 8 + 2 * 13 + 3. The backward
# pass runs the chain back: twice as long for the gradients. The longest reduction: d_ff.
FORWARD_STEPS, D_FF = 45, 64


def logits_and_grads(model, seed=None):
    tokens, mask = histories(3, VOCAB)
    decoder_input = torch.randint(2, VOCAB, (3, 4), generator=torch.Generator().manual_seed(1))
    model.zero_grad()
    if seed is not None:
        torch.manual_seed(seed)  # the dropout masks
    logits = model(input_ids=tokens, attention_mask=mask.long(), decoder_input_ids=decoder_input).logits
    torch.log_softmax(logits, -1)[..., 2].mean().backward()
    return logits.detach(), [p.grad for p in model.parameters()]


def dropout_with_fast_masks(x, p=0.5, training=True, inplace=False):
    """``F.dropout`` (the usual ``x * mask / (1 - p)``) dropping the elements ``fast_dropout`` drops: both
    draw :func:`dropped_positions` of each tensor, in the same order, from the seeded default generator."""
    if not training or p == 0:
        return x
    keep = torch.ones(x.numel(), dtype=x.dtype)
    keep[dropped_positions(x.numel(), p)] = 0
    return x * keep.view(x.shape) / (1 - p)


@pytest.mark.parametrize("initializer_factor", [1.0, 5.0])  # 5: the TIGER tests' saturated softmaxes
@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_cpu_kernels_keep_the_model(feed_forward_proj, initializer_factor):
    """The CPU-kernel T5 against a float64 copy of the model: as close as transformers' own float32 T5
    (eager and sdpa attention), and (T5's own initialisation) within the float32 bound of the computation;
    in training with the same dropout masks, its logits and every gradient."""
    original, fast = t5_pair(feed_forward_proj, dropout_rate=0.1, initializer_factor=initializer_factor)
    assert fast.config._attn_implementation == ATTENTION_NAME
    assert all(isinstance(block.layer[-1].DenseReluDense, FeedForward) for block in fast.decoder.block)
    assert not any(type(m) is torch.nn.Dropout for m in fast.modules())
    assert fast.state_dict().keys() == original.state_dict().keys()
    eager = copy.deepcopy(original)
    eager.set_attn_implementation("eager")
    exact = copy.deepcopy(eager).double()
    well_conditioned = initializer_factor == 1.0  # else float32 errors are amplified (saturated softmaxes)
    # eval: the same outputs
    models = {"sdpa": original, "eager": eager, "cpu kernels": fast, "float64": exact}
    logits = {name: logits_and_grads(model.eval())[0] for name, model in models.items()}
    worse = max(("sdpa", "eager"), key=lambda name: rms_error(logits[name], logits["float64"]))
    assert_as_accurate_as(logits["cpu kernels"], logits[worse], logits["float64"], "eval logits")
    if well_conditioned:
        for name in ("sdpa", "eager", "cpu kernels"):
            torch.testing.assert_close(logits[name].double(), logits["float64"], rtol=0,
                                       atol=float32_tolerance(logits["float64"], D_FF, FORWARD_STEPS))
    # training: random masks, so two steps differ ...
    fast.train()
    assert not torch.equal(logits_and_grads(fast)[0], logits_and_grads(fast)[0])
    # ... and with the same masks (the same draws through usual dropout: transformers' eager attention, as
    # sdpa drops inside its kernel) the same logits and gradients
    with mock.patch.object(torch.nn.functional, "dropout", dropout_with_fast_masks):
        (a, a_grads), (e, e_grads) = logits_and_grads(eager.train(), seed=2), logits_and_grads(exact.train(), seed=2)
    b, b_grads = logits_and_grads(fast, seed=2)
    assert_as_accurate_as(b, a, e, "training logits")
    assert_as_accurate_as(*(torch.cat([g.flatten() for g in grads]) for grads in (b_grads, a_grads, e_grads)),
                          "all gradients")
    if well_conditioned:  # each parameter's gradient (ill-conditioned, the error of one moves between them)
        for (name, _), grad_a, grad_b, grad_e in zip(fast.named_parameters(), a_grads, b_grads, e_grads):
            assert_as_accurate_as(grad_b, grad_a, grad_e, name)
            for grad in (grad_a, grad_b):
                torch.testing.assert_close(grad.double(), grad_e, rtol=0,
                                           atol=float32_tolerance(grad_e, D_FF, 2 * FORWARD_STEPS))
        torch.testing.assert_close(b.double(), e, rtol=0, atol=float32_tolerance(e, D_FF, FORWARD_STEPS))
