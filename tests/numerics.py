"""Float32 tolerances derived from the computation, for tests that hold on any x86-64 CPU (Intel or AMD;
AMX, AVX-512 or only AVX2; 1 or 2 threads): never one machine's rounding.

Two ways to compare float32 results:

* against the exact value (a float64 copy of the model: exact at these sizes) within
  :func:`float32_tolerance` of the computation (its longest reduction, its chain length, its magnitudes);
* against another float32 path of the same function, as accurate as it: :func:`assert_as_accurate_as`
  (RMS over a tensor) or :func:`assert_as_close_as` (worst element, for a handful of values).

Where two paths run the same operations in the same order on the same shapes, they are bitwise equal and
the test compares them exactly (and says so)."""

import math

import torch

EPS32 = torch.finfo(torch.float32).eps


def float32_tolerance(reference, reduction, steps, k=2.0):
    """The largest |error| (absolute) allowed of a float32 computation whose exact value is ``reference``
    (computed in float64: exact at this scale), on any CPU, in any summation order or thread count.

    Derivation: a float32 dot product of length n, summed in any order (SIMD lanes, blocks, threads), is
    off by |e| <= n * u * sum|a_i b_i| at worst, and by about sqrt(n) * u * sum|a_i b_i| when its rounding
    errors are independent with mean zero (Higham & Mary, SIAM J. Sci. Comput. 2019: lambda * sqrt(n) * u
    with probability >= 1 - 2 exp(-lambda^2 / 2)); u = eps / 2, lambda = 2k = 4. A chain of ``steps``
    such reductions (``reduction`` = the longest one) adds its errors like independent ones, sqrt(n *
    steps), as long as no step amplifies them: RMS-normalised layers and attention that is not saturated
    (T5's own initialisation). ``max|reference|`` stands for sum|a_i b_i| (no cancellation beyond a
    small factor). Measured on AVX-512 and AVX2, 1 and 2 threads: at most ~3 eps * max|reference| on
    logits and ~10 on one parameter's gradient, against 107 and 152 here: the bound is loose, the
    comparison with transformers' own float32 error (``assert_as_accurate_as``) is the sharp check.
    ``reference`` may be a tensor or a number (its magnitude)."""
    magnitude = reference.abs().max().item() if isinstance(reference, torch.Tensor) else abs(reference)
    return k * EPS32 * math.sqrt(reduction * steps) * magnitude


def rms_error(result, exact):
    return (result.double() - exact).square().mean().sqrt().item()


def max_error(result, exact):
    return (result.double() - exact.double()).abs().max().item()


def assert_as_accurate_as(result, reference, exact, name, factor=4.0):
    """``result``'s RMS error against ``exact`` (float64) is at most ``factor`` times that of the float32
    ``reference`` (transformers' own T5): the same function in float32 with another summation order. Two
    such errors are draws of one distribution; averaged over a tensor (100s of elements) they differ by
    less than 2x (measured <= 1.6 on AVX-512 and AVX2, 1 and 2 threads), while another computation (a
    wrong scale, a missed mask, a lower precision) is off by orders of magnitude more. The floor, one
    float32 rounding of the values, keeps the bound above 0 where the reference happens to be exact."""
    error = rms_error(result, exact)
    allowed = max(factor * rms_error(reference, exact), EPS32 * exact.square().mean().sqrt().item())
    assert error <= allowed, f"{name}: RMS error {error:.3g}, transformers' float32 {allowed / factor:.3g}"


def assert_as_close_as(result, reference, exact, name, floor, factor=8.0):
    """Worst-element version of :func:`assert_as_accurate_as`, for a few values (a max over few draws
    varies more than an RMS over many: factor 8): max|result - exact| <= factor * max(max|reference -
    exact|, floor). ``floor`` (an absolute error, e.g. a :func:`float32_tolerance` with k = 0.5: one
    typical rounding of the chain) keeps the bound above 0 where the reference happens to be exact."""
    error = max_error(result, exact)
    allowed = factor * max(max_error(reference, exact), floor)
    assert error <= allowed, f"{name}: max error {error:.3g} > {factor} x reference's float32 {allowed / factor:.3g}"
