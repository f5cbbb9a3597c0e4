"""The building blocks shared by both towers, one small function per idea (after picoGPT's gpt2.py).

Weights are plain arrays named by their checkpoint keys; a Linear weight stays in its [out, in] layout.
Each op is written in NumPy; where the backend says so (backend.py), the same maths runs in a Numba kernel.
"""
import math

import numpy as np

from . import backend


def layer_norm(x, w, b, eps):  # [..., d], [d], [d] -> [..., d]
    if backend.uses("elementwise"):
        return backend.kernels().layer_norm(x, w, b, eps)
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
FUSED = ("gelu", "quick_gelu")  # the activations the Numba bias+activation kernel knows


def check_activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return name


def linear(x, w, b=None, act=None, residual=None):  # [..., in], [out, in], [out] -> act(x @ w.T + b) + residual
    """One [M, in] x [in, out] GEMM (a 3-D `x @ w.T` would run one small GEMM per batch row), then the bias,
    the activation `act` (a name, or None) and the `residual` [..., out]: on Numba in one pass, inside the
    GEMM when it is the Numba one."""
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    r2 = None if residual is None else residual.reshape(x2.shape[0], w.shape[0])
    on_numba = backend.gemm_on_numba(x2.shape[0])
    if backend.uses("elementwise") and act in (None, *FUSED):
        k = backend.kernels()
        code = {None: k.ACT_NONE, "gelu": k.ACT_GELU, "quick_gelu": k.ACT_QUICK_GELU}[act]
        if on_numba:
            y = k.matmul_nt(x2, w, bias=b, act=code, residual=r2)
        else:
            y = k.bias_act_residual_(x2 @ w.T, b, code, r2)
    else:
        y = backend.kernels().matmul_nt(x2, w) if on_numba else x2 @ w.T  # [M, out]
        if b is not None:
            y += b
        if act is not None:
            y = ACTIVATIONS[act](y)
        if r2 is not None:
            y += r2
    return y.reshape(lead + (w.shape[0],))


def split_heads(x, n_head):  # [B, T, C] -> [B, H, T, C/H]
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):  # [B, H, T, Dh] -> [B, T, H*Dh]
    B, H, T, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)


def attention(q, k, v, mask, scale, return_probs=False):  # [B, H, T, Dh] x3, [B, 1, 1, T] | None
    """softmax(q k^T * scale + mask) v -> [B, H, T, Dh], and the probabilities [B, H, T, T] if asked."""
    if backend.uses("attention", k.shape[2]):
        return backend.kernels().attention(q, k, v, mask, scale, return_probs)
    scores = q @ k.transpose(0, 1, 3, 2)  # [B, H, T, T] on OpenBLAS
    if backend.uses("elementwise"):  # scale, mask and softmax in one parallel pass
        probs = backend.kernels().softmax(scores, scale, mask, out=scores)
        return probs @ v, (probs if return_probs else None)
    scores *= np.float32(scale)
    if mask is not None:
        scores += mask
    scores -= scores.max(axis=-1, keepdims=True)  # stable: exp never overflows
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores @ v, (scores if return_probs else None)


def mha(x, mask, q, k, v, n_head, return_probs=False, packing=None, xq=None):
    """Multi-head self-attention without the output projection.  # [B, T, C] -> [B, T, C], [B, H, T, T]|None
    q, k, v are (weight, bias) pairs; mask is additive [B, 1, 1, T] or None.
    With `packing`, x (and the output) hold only the packed rows [n, C] of the batch. With `xq` [B, Tq, C], only
    these rows are queries (the output is [B, Tq, C]); every row of x still gives a key and a value."""
    batched = packing.unpack if packing is not None else (lambda y: y)  # attention runs on [B, H, T, D]
    keys, values = (split_heads(batched(linear(x, *wb)), n_head) for wb in (k, v))
    query = split_heads(batched(linear(x, *q)) if xq is None else linear(xq, *q), n_head)
    out, probs = attention(query, keys, values, mask, (x.shape[-1] // n_head) ** -0.5, return_probs)
    out = merge_heads(out)
    return (packing.pack(out) if packing is not None and xq is None else out), probs


class Packing:
    """The rows of a [B, T, C] batch worth computing, packed as [n, C]: padding tokens are never attended to,
    so a forward that only returns real tokens' outputs can leave them out of every GEMM."""

    def __init__(self, keep):  # [B, T] bool
        self.shape, self.rows = keep.shape, np.flatnonzero(keep)
        self.firsts = np.searchsorted(self.rows, np.arange(keep.shape[0]) * keep.shape[1])  # token 0's row

    def pack(self, x):  # [B, T, C] -> [n, C]
        return x.reshape(-1, x.shape[-1])[self.rows]

    def unpack(self, x):  # [n, C] -> [B, T, C], zeros in the left-out rows
        out = np.zeros((self.shape[0] * self.shape[1], x.shape[-1]), x.dtype)
        out[self.rows] = x
        return out.reshape(self.shape + (x.shape[-1],))

    def first(self, x):  # [n, C] -> [B, C]: each sequence's token 0 (kept)
        return x[self.firsts]


def additive_mask(attention_mask):  # [B, T] of 1 (keep) / 0 (pad) -> [B, 1, 1, T] of 0 / float32 min
    keep = np.asarray(attention_mask).astype(bool)
    return np.where(keep, np.float32(0), np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
