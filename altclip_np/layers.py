"""The building blocks shared by both towers, one small function per idea (after picoGPT's gpt2.py).

Weights are plain arrays named by their checkpoint keys; a Linear weight stays in its [out, in] layout.
Matmuls and attention go through `backend`, which is plain NumPy or the Numba kernels of `kernels/`.
"""
import math

import numpy as np

from . import backend


def layer_norm(x, w, b, eps):  # [..., d], [d], [d] -> [..., d]
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * w + b


def erf(x):  # [...] -> [...]; Abramowitz & Stegun 7.1.26 in float64, |error| < 1.5e-7 (NumPy has no erf)
    a = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-a * a))


def gelu(x):  # exact (erf) GELU, transformers' "gelu"
    return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(np.float32)


def gelu_tanh(x):  # "gelu_new" / "gelu_pytorch_tanh"
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x**3)))


def quick_gelu(x):  # CLIP's x * sigmoid(1.702 x)
    return x / (1.0 + np.exp(np.float32(-1.702) * x))


def silu(x):
    return x / (1.0 + np.exp(-x))


def relu(x):
    return np.maximum(x, 0)


ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "quick_gelu": quick_gelu,
               "silu": silu, "swish": silu, "relu": relu}


def activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def linear(x, w, b=None):  # [..., in], [out, in], [out] -> [..., out]
    return backend.linear(x, w, b)


def split_heads(x, n_head):  # [B, T, C] -> [B, H, T, C/H]
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):  # [B, H, T, Dh] -> [B, T, H*Dh]
    B, H, T, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)


def mha(x, mask, q, k, v, n_head, return_probs=False):
    """Multi-head self-attention without the output projection.  # [B, T, C] -> [B, T, C], [B, H, T, T]|None
    q, k, v are (weight, bias) pairs; mask is additive [B, 1, 1, T] or None."""
    heads = [split_heads(linear(x, *wb), n_head) for wb in (q, k, v)]
    scale = (x.shape[-1] // n_head) ** -0.5
    out, probs = backend.attention(*heads, mask, scale, return_probs)
    return merge_heads(out), probs


def additive_mask(attention_mask):  # [B, T] of 1 (keep) / 0 (pad) -> [B, 1, 1, T] of 0 / float32 min
    keep = np.asarray(attention_mask).astype(bool)
    return np.where(keep, np.float32(0), np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
