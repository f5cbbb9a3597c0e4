"""fast.py against the reference it maps onto the kernels, op by op and layer by layer: each fused call
(GEMM epilogue, softmax pass, fused attention, packed rows, the pooled-only last layer) on both of its
branches (Numba GEMM or OpenBLAS, fused attention or BLAS + softmax) equals the reference function it is
named after. Random weights at the scale of the tiny test models; the bound is stated relative to the output's
largest magnitude, with the maximum observed beside it (AMD EPYC Zen 4)."""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from altclip_np import fast, kernels, layers, text, vision
from altclip_np.layers import Params

rng = np.random.default_rng(0)
C, F, HEADS = 48, 80, 6


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(ours, ref, bound):
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= bound * np.abs(ref).max()


def fast_ops(gemm, attention_on_numba, weights=()):
    # gemm: "panels" (the Numba GEMM on `weights` packed once), "numba" (packed on every call) or "blas"
    packed = {id(w): (w, kernels.pack_panels(w)) for w in weights if w.ndim == 2} if gemm == "panels" else {}
    ops = fast.Fast("numba", packed)
    ops.gemm_on_numba = lambda rows: gemm != "blas"
    ops.attention_on_numba = lambda tokens: attention_on_numba
    return ops


GEMMS = ["panels", "numba", "blas"]
BRANCHES = list(itertools.product(GEMMS, [True, False]))  # (GEMM, fused attention)


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("act", [None, "gelu", "quick_gelu", "relu", "gelu_new"])
@pytest.mark.parametrize("with_residual", [True, False])
def test_linear_with_its_epilogue(gemm, act, with_residual):
    x, w, b, r = randn(2, 7, C), randn(F, C, scale=0.2), randn(F), randn(2, 7, F)
    ours = fast_ops(gemm, True, [w]).linear(x, w, b, act=act, residual=r if with_residual else None)
    ref = layers.linear(x, w, b)
    ref = ref if act is None else layers.ACTIVATIONS[act](ref)
    close(ours, ref + r if with_residual else ref, 1e-6)  # observed <= 1.7e-7


def test_a_weight_with_panels_is_not_packed_again(monkeypatch):
    # the model's weights are packed once (model.weight_panels); matmul_nt would pack on every call
    x, w, b = randn(5, C), randn(F, C, scale=0.2), randn(F)
    ops, other = fast_ops("panels", True, [w]), w.copy()  # `other`: the same values, but no panels
    monkeypatch.setattr("altclip_np.kernels.matmul.pack_panels", lambda w: pytest.fail("packed again"))
    close(ops.linear(x, w, b), layers.linear(x, w, b), 1e-6)
    with pytest.raises(BaseException, match="packed again"):
        ops.linear(x, other, b)


@pytest.mark.parametrize("fused", [True, False])
def test_attention_both_ways(fused):
    q, k, v = (randn(2, HEADS, 9, 8) for _ in range(3))
    mask = layers.additive_mask(np.array([[1] * 9, [1] * 5 + [0] * 4]))
    out, probs = fast_ops("numba", fused).attention(q, k, v, mask, 8 ** -0.5, return_probs=True)
    ref_out, ref_probs = layers.attention(q, k, v, mask, 8 ** -0.5)
    close(out, ref_out, 1e-6)  # observed <= 1.8e-7
    close(probs, ref_probs, 1e-6)
    assert fast_ops("numba", fused).attention(q, k, v, mask, 8 ** -0.5)[1] is None


def layer_weights(names_and_shapes, prefix):
    return Params({prefix + name: randn(*shape, scale=0.3 if len(shape) == 2 else 1.0)
                   + (1 if name.endswith(("norm1.weight", "norm2.weight", "LayerNorm.weight")) else 0)
                   for name, shape in names_and_shapes.items()}, prefix)


def vision_layer_weights():
    prefix = "vision_model.encoder.layers.0."
    cfg = SimpleNamespace(hidden_size=C, intermediate_size=F, patch_size=4, num_channels=3, num_patches=4,
                          num_hidden_layers=1)
    shapes = {k[len(prefix):]: s for k, s in vision.expected_weights(cfg).items() if k.startswith(prefix)}
    return layer_weights(shapes, prefix)


def text_layer_weights():
    prefix = "text_model.roberta.encoder.layer.0."
    cfg = SimpleNamespace(hidden_size=C, intermediate_size=F, vocab_size=10, max_position_embeddings=12,
                          type_vocab_size=1, num_hidden_layers=1, project_dim=C)
    shapes = {k[len(prefix):]: s for k, s in text.expected_weights(cfg).items() if k.startswith(prefix)}
    return layer_weights(shapes, prefix)


@pytest.mark.parametrize("gemm,fused", BRANCHES)
def test_vision_layer_and_its_pooled_only_form(gemm, fused):
    cfg = SimpleNamespace(layer_norm_eps=1e-5, num_attention_heads=HEADS, hidden_act="quick_gelu")
    layer, x = vision_layer_weights(), randn(2, 10, C)
    ops = fast_ops(gemm, fused, layer.arrays())
    ref, ref_probs = vision.encoder_layer(x, layer, cfg, return_probs=True)
    ours, probs = ops.vision_layer(x, layer, cfg, return_probs=True)
    close(ours, ref, 5e-6)  # observed <= 1.2e-6 (over gelu, quick_gelu, relu)
    close(probs, ref_probs, 1e-5)  # observed <= 3.8e-6: scores up to ~20, so softmax magnifies their rounding
    pooled, _ = ops.vision_layer(x, layer, cfg, pooled_only=True)
    close(pooled, ref[:, :1], 5e-6)  # observed <= 8.2e-7


@pytest.mark.parametrize("gemm,fused", BRANCHES)
def test_text_layer_packed_and_pooled_only(gemm, fused):
    cfg = SimpleNamespace(layer_norm_eps=1e-5, num_attention_heads=HEADS, hidden_act="gelu")
    layer, x = text_layer_weights(), randn(3, 8, C)
    ops = fast_ops(gemm, fused, layer.arrays())
    attention_mask = np.array([[1] * 8, [1] * 3 + [0] * 5, [0] * 8])  # full, padded, all padding
    mask = layers.additive_mask(attention_mask)
    ref, _ = text.roberta_layer(x, mask, layer, cfg)
    close(ops.text_layer(x, mask, layer, cfg)[0], ref, 2e-6)  # observed <= 2.9e-7
    keep = fast.rows_to_compute(attention_mask)
    packing = fast.Packing(keep)
    packed, _ = ops.text_layer(packing.pack(x), mask, layer, cfg, packing=packing)
    close(packed, ref[keep], 2e-6)  # the rows kept: real tokens, token 0, every token of the all-padding row
    pooled, _ = ops.text_layer(packing.pack(x), mask, layer, cfg, packing=packing, pooled_only=True)
    close(pooled, ref[:, :1], 2e-6)


@pytest.mark.parametrize("gemm", ["panels", "blas"])
def test_the_mlp_writes_every_layer_into_one_buffer(gemm):
    # fc1's output is dead once fc2 has read it: a call keeps one buffer for it (33.7 MB for eight images, over
    # glibc's mmap threshold, so a fresh one per layer was a fresh mapping to fault in), with the bits fresh
    # arrays give (max difference 0), in the full layers and in the pooled-only one after them
    cfg = SimpleNamespace(layer_norm_eps=1e-5, num_attention_heads=HEADS, hidden_act="quick_gelu")
    layers_ = [vision_layer_weights() for _ in range(3)]
    x0 = randn(2, 10, C)

    def forward(ops):
        x = x0
        for i, layer in enumerate(layers_):
            x, _ = ops.vision_layer(x, layer, cfg, pooled_only=i == len(layers_) - 1)
        return x

    weights = [w for layer in layers_ for w in layer.arrays()]
    ops, fresh = fast_ops(gemm, True, weights), fast_ops(gemm, True, weights)
    bases, reused = [], ops.mlp_buffer

    def mlp_buffer(x, width):  # the buffer, noting whose memory it is
        out = reused(x, width)
        bases.append(out.base)
        return out

    ops.mlp_buffer = mlp_buffer
    fresh.mlp_buffer = lambda x, width: np.empty(x.shape[:-1] + (width,), np.float32)
    ours, ref = forward(ops), forward(fresh)
    assert len(bases) == 3 and all(b is bases[0] for b in bases) and bases[0].shape == (20, F)
    assert ours.shape == (2, 1, C) and np.array_equal(ours, ref)


def test_the_numpy_backend_runs_the_reference(monkeypatch):
    monkeypatch.setattr("altclip_np.backend._backend", "numpy")
    ops = fast.ops()
    assert ops is fast.REFERENCE
    assert (ops.linear, ops.layer_norm, ops.vision_layer, ops.text_layer) == \
        (layers.linear, layers.layer_norm, vision.encoder_layer, text.roberta_layer)
