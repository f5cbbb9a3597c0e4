"""The maths both towers share, in plain NumPy, one small function per idea (after picoGPT's gpt2.py).

This is the readable reference: the `numpy` backend runs exactly these functions (and the towers' layers in
vision.py and text.py, written with them). fast.py maps the same maths onto the Numba kernels, each fast
function beside the reference it must equal. A Linear weight stays in its [out, in] checkpoint layout.
"""
import math

import numpy as np


def layer_norm(x, weight, bias, eps):  # [..., d], [d], [d] -> [..., d]; biased variance, as torch
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias


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


def check_activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return name


def linear(x, weight, bias=None):  # [..., in], [out, in], [out] -> [..., out]
    y = x @ weight.T
    return y if bias is None else y + bias


def softmax(x):  # [..., n] -> [..., n] over the last axis
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # stable: the largest exponent is 0
    return e / e.sum(axis=-1, keepdims=True)


def split_heads(x, n_head):  # [B, T, C] -> [B, H, T, C/H]
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):  # [B, H, T, Dh] -> [B, T, H*Dh]
    B, H, T, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)


def attention(q, k, v, mask, scale):  # [B, H, Tq, Dh], [B, H, Tk, Dh] x2, [B, 1, 1, Tk] | None
    """softmax(q k^T * scale + mask) v -> ([B, H, Tq, Dh], probabilities [B, H, Tq, Tk])."""
    scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(scale)
    probs = softmax(scores if mask is None else scores + mask)
    return probs @ v, probs


def mha(x, mask, query, key, value, n_head):  # [B, T, C] -> [B, T, C], probs [B, H, T, T]
    """Multi-head self-attention without its output projection. query, key, value: the projections' weights
    (each with .weight [C, C] and .bias [C]); mask: additive [B, 1, 1, T] or None."""
    q, k, v = (split_heads(linear(x, p.weight, p.bias), n_head) for p in (query, key, value))
    out, probs = attention(q, k, v, mask, (x.shape[-1] // n_head) ** -0.5)
    return merge_heads(out), probs


def additive_mask(attention_mask):  # [B, T] of 1 (keep) / 0 (pad) -> [B, 1, 1, T] of 0 / float32 min
    keep = np.asarray(attention_mask).astype(bool)
    return np.where(keep, np.float32(0), np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]


class Params:
    """The weights under one prefix of the checkpoint, reached by the key's own words: for p =
    Params(weights).vision_model, `p.encoder.layers[0].self_attn.q_proj.weight` is
    weights["vision_model.encoder.layers.0.self_attn.q_proj.weight"]."""

    def __init__(self, weights, prefix=""):
        self._weights, self._prefix = weights, prefix

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        key = self._prefix + name
        return self._weights[key] if key in self._weights else Params(self._weights, key + ".")

    def __getitem__(self, i):  # a numbered layer
        return Params(self._weights, f"{self._prefix}{i}.")

    def arrays(self):  # every array under this prefix
        return [a for key, a in self._weights.items() if key.startswith(self._prefix)]
