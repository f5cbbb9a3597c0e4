"""Fused scaled-dot-product attention: out = softmax(q k^T * scale + mask) v, per batch and head.

The NumPy twin materialises all [B, H, T, T] scores. The Numba kernel runs one (batch, head) per parallel
task and walks the queries RB rows at a time, so only an RB x T block of scores exists at once (it stays in
L1/L2). Both products use the GEMM's register tile (`_tile.dot_tile`), which wants the reduction axis
contiguous in both operands: k [T, D] already is for q k^T, and v is transposed once per task to
v^T [D, T] for p v. Operands are zero-padded to multiples of the tile, so padded keys add nothing.
"""
import numpy as np
from numba import njit, prange

from ._tile import FAST, MR, NR, dot_tile, store_tile
from .elementwise import softmax_row

RB = 32  # query rows per block of scores


def attention_numpy(q, k, v, mask, scale, return_probs=False):
    """q, k, v [B, H, T, D]; mask additive [B, 1, 1, T] or None -> (out [B, H, T, D], probs [B, H, T, T] | None)"""
    scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(scale)  # [B, H, T, T]
    if mask is not None:
        scores = scores + mask
    scores = scores - scores.max(axis=-1, keepdims=True)  # stable: the largest exponent is 0
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs @ v, (probs if return_probs else None)


def _ceil(x, m):
    return (x + m - 1) // m * m


@njit(parallel=True, fastmath=FAST, cache=True)
def _attention(q, k, v, mask, scale, out, probs, want_probs):
    # q, k, v, out [B, H, T, D]; mask [B, T] additive; probs [B, H, T, T] (a dummy unless want_probs)
    nb, nh, t, d = q.shape
    tp = (t + NR - 1) // NR * NR
    dp = (d + NR - 1) // NR * NR
    for bh in prange(nb * nh):
        b, h = bh // nh, bh % nh
        kp = np.zeros((tp, dp), np.float32)  # [T, D] zero-padded
        kp[:t, :d] = k[b, h]
        vt = np.zeros((dp, tp), np.float32)  # [D, T] zero-padded
        vt[:d, :t] = v[b, h].T
        qp = np.zeros((RB, dp), np.float32)  # one block of queries
        s = np.zeros((RB, tp), np.float32)  # its scores, then probabilities; padded keys stay 0
        scratch = np.empty(t, np.float32)
        for r0 in range(0, t, RB):
            rb = min(RB, t - r0)
            rbp = (rb + MR - 1) // MR * MR
            qp[:rb, :d] = q[b, h, r0:r0 + rb]
            qp[rb:rbp, :] = 0.0
            for i0 in range(0, rbp, MR):  # [rb, D] x [T, D] -> [rb, T]
                for j0 in range(0, tp, NR):
                    store_tile(s, i0, j0, dot_tile(qp, i0, kp, j0, 0, dp), rb, t, False)
            for i in range(rb):
                row = s[i, :t]
                for j in range(t):
                    row[j] = row[j] * scale + mask[b, j]
                softmax_row(row, row, scratch)
                if want_probs:
                    probs[b, h, r0 + i, :] = row
            for i0 in range(0, rbp, MR):  # [rb, T] x [D, T] -> [rb, D]
                for j0 in range(0, dp, NR):
                    store_tile(out[b, h, r0:], i0, j0, dot_tile(s, i0, vt, j0, 0, tp), rb, d, False)


def attention(q, k, v, mask, scale, return_probs=False):
    """The fused kernel; same contract as `attention_numpy`."""
    q, k, v = (np.ascontiguousarray(a, dtype=np.float32) for a in (q, k, v))
    nb, _, t, _ = q.shape
    mask2 = np.zeros((nb, t), np.float32) if mask is None else np.ascontiguousarray(
        np.broadcast_to(mask, (nb, 1, 1, t)).reshape(nb, t), dtype=np.float32)
    out = np.empty_like(q)
    probs = np.empty(q.shape[:3] + (t,), np.float32) if return_probs else np.empty((1, 1, 1, 1), np.float32)
    _attention(q, k, v, mask2, np.float32(scale), out, probs, return_probs)
    return out, (probs if return_probs else None)
