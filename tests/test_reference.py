"""The kernels' NumPy twins (kernels/elementwise.py, kernels/attention.py) against the one reference, layers.py.

Where a kernel needs another formula (a float32 rational erf and a polynomial exp the compiler can vectorise,
where the reference uses float64 Abramowitz-Stegun and NumPy's exp), the bound below says how far the twin may
be from the reference; each states the maximum difference observed (AMD EPYC Zen 4, NumPy's own float32 maths).
"""
import importlib
import math

import numpy as np

from altclip_np import layers

elementwise = importlib.import_module("altclip_np.kernels.elementwise")
attention_twin = importlib.import_module("altclip_np.kernels.attention").attention_numpy
X = np.linspace(-8, 8, 200_001, dtype=np.float32)  # steps of 8e-5, the range activations reach and beyond
rng = np.random.default_rng(0)


def test_erf_twin_and_reference_against_math_erf():
    exact = np.array([math.erf(float(t)) for t in X])
    assert np.abs(layers.erf(X) - exact).max() < 1.5e-7  # A&S 7.1.26's stated bound; observed 1.39e-7
    assert np.abs(elementwise.erf_numpy(X) - exact).max() < 5e-7  # observed 3.95e-7 (float32 rational)
    assert np.abs(elementwise.erf_numpy(X) - layers.erf(X)).max() < 6e-7  # observed 4.09e-7


def test_gelu_twin():  # differs where erf does, scaled by x / 2: observed 1.43e-6 at x = 5.56 (3 float32 ulps)
    ref = layers.gelu(X)
    assert np.abs(elementwise.gelu_numpy(X) - ref).max() / np.abs(ref).max() < 3e-7  # observed 1.8e-7
    assert (np.abs(elementwise.gelu_numpy(X) - ref) / np.maximum(np.abs(ref), 1)).max() < 2e-6  # observed 1.08e-6


def test_quick_gelu_twin():  # the twin's Cephes expf against NumPy's exp
    assert np.abs(elementwise.quick_gelu_numpy(X) - layers.quick_gelu(X)).max() < 1e-6  # observed 4.77e-7
    big = X * 10  # exp over [-80, 80]: relative error
    assert (np.abs(elementwise.exp_numpy(big) - np.exp(big)) / np.exp(big)).max() < 5e-7  # observed 2.0e-7


def test_layer_norm_twin():
    x = rng.standard_normal((64, 768), dtype=np.float32) * 3 + 1
    weight, bias = rng.standard_normal((2, 768), dtype=np.float32)
    ref = layers.layer_norm(x, weight, bias, 1e-5)
    assert np.abs(elementwise.layer_norm_numpy(x, weight, bias, 1e-5) - ref).max() <= 1e-6  # observed 0


def masked_scores():  # [2, 4, 77, 77] scores and a [2, 1, 1, 77] additive mask hiding ~30% of the keys
    scores = rng.standard_normal((2, 4, 77, 77), dtype=np.float32) * 4
    mask = np.where(rng.random((2, 1, 1, 77)) < 0.3, np.finfo(np.float32).min, 0).astype(np.float32)
    return scores, mask


def test_softmax_twin():
    scores, mask = masked_scores()
    ref = layers.softmax(scores * np.float32(0.125) + mask)
    assert np.abs(elementwise.softmax_numpy(scores, 0.125, mask) - ref).max() < 1e-7  # observed 1.5e-8


def test_attention_twin():
    _, mask = masked_scores()
    q, k, v = (rng.standard_normal((2, 4, 77, 64), dtype=np.float32) for _ in range(3))
    out, probs = attention_twin(q, k, v, mask, 0.125, return_probs=True)
    ref_out, ref_probs = layers.attention(q, k, v, mask, 0.125)
    assert np.abs(out - ref_out).max() <= 1e-6 and np.abs(probs - ref_probs).max() <= 1e-7  # observed 0, 0
    assert attention_twin(q, k, v, None, 0.125)[1] is None
