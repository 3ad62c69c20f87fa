"""The CPU kernels of ``recbole_letter.model.t5_cpu``: dropout with the right distribution and gradient,
and a T5 that is the same model (weights, state_dict, outputs) with them swapped in."""

import copy
import math

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_letter.model.t5_cpu import ATTENTION_NAME, FeedForward, dropped_positions, fast_dropout, use_cpu_kernels
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
    assert len(dropped_positions(0, 0.3)) == 0
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
    expected = original.wo(fast._activation(hidden).masked_fill(dropped.view(3, 5, 64), 0) / 0.7)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # the scale rounds after wo, not before
    (grad,) = torch.autograd.grad(out.square().sum(), hidden)
    # float rounding of another order of operations (gradients of magnitude ~20 here)
    torch.testing.assert_close(grad, torch.autograd.grad(expected.square().sum(), hidden)[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.eval()(hidden), original.eval()(hidden))


def t5_pair(feed_forward_proj, dropout_rate):
    """The same random T5 twice: as ``transformers`` builds it, and with the CPU kernels."""
    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                      num_decoder_layers=2, dropout_rate=dropout_rate, feed_forward_proj=feed_forward_proj,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, initializer_factor=5.0)
    original = T5ForConditionalGeneration(config)
    return original, use_cpu_kernels(copy.deepcopy(original))


def logits_and_grads(model):
    tokens, mask = histories(3, VOCAB)
    decoder_input = torch.randint(2, VOCAB, (3, 4), generator=torch.Generator().manual_seed(1))
    model.zero_grad()
    logits = model(input_ids=tokens, attention_mask=mask.long(), decoder_input_ids=decoder_input).logits
    torch.log_softmax(logits, -1)[..., 2].mean().backward()
    return logits.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_cpu_kernels_keep_the_model(feed_forward_proj):
    original, fast = t5_pair(feed_forward_proj, dropout_rate=0.1)
    assert fast.config._attn_implementation == ATTENTION_NAME
    assert all(isinstance(block.layer[-1].DenseReluDense, FeedForward) for block in fast.decoder.block)
    assert not any(type(m) is torch.nn.Dropout for m in fast.modules())
    assert fast.state_dict().keys() == original.state_dict().keys()
    # eval: the same outputs
    torch.testing.assert_close(logits_and_grads(fast.eval())[0], logits_and_grads(original.eval())[0],
                               rtol=1e-5, atol=1e-5)
    # training: random masks, so two steps differ ...
    fast.train()
    assert not torch.equal(logits_and_grads(fast)[0], logits_and_grads(fast)[0])
    # ... and without dropout the same logits and gradients as T5's own eager attention (sdpa's backward
    # rounds differently: up to 1e-3 on gradients of magnitude 20 here, for both eager versions alike)
    original, fast = t5_pair(feed_forward_proj, dropout_rate=0.0)
    original.set_attn_implementation("eager")
    (a, a_grads), (b, b_grads) = logits_and_grads(original.train()), logits_and_grads(fast.train())
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    for grad_a, grad_b in zip(a_grads, b_grads):
        torch.testing.assert_close(grad_b, grad_a, rtol=1e-5, atol=1e-6)
