"""The one switch between plain NumPy and the Numba kernels in `kernels/`.

Every matmul and attention of the model goes through `linear` and `attention` below, so a reader sees the
maths in NumPy (`backend="numpy"`) and a user gets the fast kernels (`backend="numba"`, the default once
`kernels/` is in place). Pick with `set_backend(...)`, or the environment variable ALTCLIP_NP_BACKEND.
"""
import os

import numpy as np

BACKENDS = ("numpy", "numba")
_backend = os.environ.get("ALTCLIP_NP_BACKEND", "numpy")


def set_backend(name):
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend():
    return _backend


def linear(x, w, b=None):  # [..., in], [out, in] (checkpoint layout), [out] -> [..., out]
    y = x @ w.T
    if b is not None:
        y += b
    return y


def attention(q, k, v, mask, scale, return_probs=False):
    """Scaled dot-product attention.  # q,k,v [B, H, T, Dh], mask additive [B, 1, 1, T] or None
    -> out [B, H, T, Dh] (and probs [B, H, T, T] when return_probs, else None)"""
    scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(scale)
    if mask is not None:
        scores += mask
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = scores @ v
    return out, (scores if return_probs else None)
