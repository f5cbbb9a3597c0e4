"""Fused scaled-dot-product attention: out = softmax(q k^T * scale + mask) v, per batch and head.
Queries and keys may differ in number (Tq, Tk): the embedding-only forward asks for the first token's row only.

The NumPy twin materialises all [B, H, T, T] scores. The Numba kernel runs a group of (batch, head) pairs per
parallel task (its scratch allocated once per group) and walks each head's queries RB rows at a time, so only
an RB x T block of scores exists at once (it stays in L1/L2). Both products run on the GEMM's register tile
(`_tile.panel_tile`, see matmul.py), k and v packed per head as its panels: k as panels of LANES keys, v as
panels of LANES columns of D. Per block:
  1. scores q k^T: ROWS queries x LANES keys per tile, a sum over D (no horizontal sums, as a tile of dot
     products over D = 64 needs); the keys are padded to whole panels here only (257 -> 320 on AVX-512);
  2. score * scale + mask, each row's max (`row_max`), exp(score - max) over the whole block as one flat
     vectorised loop (`_exp_row`: short rows would otherwise spend their time in a per-row loop's scalar
     remainder; the padding keys' columns are computed too, finite, and never read), each row's sum;
  3. p v: ROWS queries x LANES columns of D per tile, a sum over the keys; each output row divided by its row
     sum at the store, so probabilities are only normalised when they are asked for.
A query row's result does not depend on the other rows. One parallel region per call. Measured on Zen 5
against the 4 x 4 dot-product tile this replaced (kernel alone): 257 tokens 1.3-1.4x, 77 tokens 1.5x, 32
1.09x, 16 tokens 0.8x (16 keys in a panel of 64 lanes; `auto` runs 16-token attention on BLAS there anyway).
q, k and v are read in the [B, T, H, D] memory that splitting heads views as [B, H, T, D] (other layouts are
copied into it): each task packs its head's rows into contiguous scratch anyway, so nothing is copied up
front, and the output is written in [B, T, H, D] order, so merging the heads back is free (4 fewer [B, T, C]
copies per layer).
"""
import numba
import numpy as np
from numba import njit, prange, types

from ._jit import JIT, MODEL, array, helper, kernel
from ._tile import panel_tile
from ._tile import PANEL_LANES as LANES
from ._tile import PANEL_ROWS as ROWS
from .elementwise import _exp_row, row_max

RB = 8 * ROWS  # query rows per block of scores: whole row tiles (4 and 16 tiles ran the same)


def attention_numpy(q, k, v, mask, scale, return_probs=False):
    """q [B, H, Tq, D], k, v [B, H, Tk, D]; mask additive [B, 1, 1, Tk] or None
    -> (out [B, H, Tq, D], probs [B, H, Tq, Tk] | None)"""
    scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(scale)  # [B, H, Tq, Tk]
    if mask is not None:
        scores = scores + mask
    scores = scores - scores.max(axis=-1, keepdims=True)  # stable: the largest exponent is 0
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs @ v, (probs if return_probs else None)


@helper(**JIT)
def _attention_head(q, k, v, b, h, mask_b, scale, out, probs, want_probs, kpan, vpan, qp, s_flat, scratch, o,
                    inv_sum):
    # head h of batch row b: q, out [B, Tq, H, D]; k, v [B, T, H, D]; mask_b [T]; probs [Tq, T] (written if
    # want_probs); kpan [ceil(T / LANES), D, LANES] (k's panels, the weights' layout) and vpan [ceil(D / LANES),
    # T, LANES] (v's), zero past T and D; the rest scratch for RB query rows
    # All four are C-contiguous and indexed in full, [b, t, h, c], with unsigned indices: a row of a head as a
    # strided view (q[b, :, h]) has an inner stride Numba does not know, and then no loop over D vectorised
    # (packing, copying q and storing out took 25% of the kernel at 257 tokens). Kernel alone, 2 threads, Xeon
    # model 167: 1 x 257 tokens 2.0 -> 1.75 ms, 8 x 257 16.5 -> 14.5, 8 x 77 2.05 -> 1.67, 32 x 16 1.06 -> 0.82.
    tq, d = q.shape[1], q.shape[3]
    t = k.shape[1]
    bb, hh = np.uint64(b), np.uint64(h)
    tp = kpan.shape[0] * LANES
    s = s_flat.reshape((RB, tp))
    shifted = scratch.reshape((RB, tp))
    # Element loops, not slice assignments: Numba compiles each slice assignment of a new pair of array types
    # into a function of its own (31 of them once cost 6 s of this kernel's 17 s of compiling).
    for j in range(t):
        jj = np.uint64(j)
        kp, jl = kpan[j // LANES], np.uint64(j % LANES)
        for c in range(d):  # k transposed: one strided store per element
            kp[np.uint64(c), jl] = k[bb, jj, hh, np.uint64(c)]
        for p in range(vpan.shape[0]):  # v's rows, LANES at a time
            vp = vpan[p, j]
            for c in range(min(LANES, d - p * LANES)):
                vp[np.uint64(c)] = v[bb, jj, hh, np.uint64(p * LANES + c)]
    for r0 in range(0, tq, RB):
        rb = min(RB, tq - r0)
        for i in range(rb):
            qr = np.uint64(r0 + i)
            for c in range(d):
                qp[i, np.uint64(c)] = q[bb, qr, hh, np.uint64(c)]
        for p in range(kpan.shape[0]):  # [rb, D] x [D, T] -> s [rb, T + padding]
            for i0 in range(0, rb, ROWS):
                panel_tile(qp, i0, rb, kpan[p], 0, d, s, p * LANES, tp, False)
        for i in range(rb):  # scale, mask, each row's max (the padding keys' columns are never read)
            for j in range(t):
                s[i, j] = s[i, j] * scale + mask_b[j]
            m = row_max(s[i], t)
            for j in range(tp):
                shifted[i, j] = s[i, j] - m  # stable: the largest exponent is 0
        blk = scratch[:rb * tp]
        _exp_row(blk, s_flat[:rb * tp], blk)
        for i in range(rb):
            total = np.float32(0.0)
            for j in range(t):
                total += s[i, j]
            inv_sum[i] = np.float32(1.0) / total
        for p in range(vpan.shape[0]):  # [rb, T] x [T, D] -> o [rb, D + padding]; each row times 1 / its sum
            for i0 in range(0, rb, ROWS):
                panel_tile(s, i0, rb, vpan[p], 0, t, o, p * LANES, o.shape[1], False)
        for i in range(rb):
            qr = np.uint64(r0 + i)
            for c in range(d):
                out[bb, qr, hh, np.uint64(c)] = o[i, np.uint64(c)] * inv_sum[i]
        if want_probs:
            for i in range(rb):
                for j in range(t):
                    probs[r0 + i, j] = s[i, j] * inv_sum[i]


@njit(inline="always", **JIT)
def _zeros_aligned(n):  # [n] float32 zeros starting on a 64-byte boundary
    # Numba aligns its arrays to 32 bytes, so half of them would split every zmm load of the panels across two
    # cache lines: on the Xeon (model 167) that cost the GEMM 20% (matmul.empty_aligned)
    buf = np.zeros(n + 16, np.float32)
    start = (64 - buf.ctypes.data % 64) % 64 // 4
    return buf[start:start + n]


@kernel(array(4), array(4), array(4), array(2), types.float32, array(4, readonly=False), array(4, readonly=False),
        types.boolean, types.int64, cost=6, group=MODEL)
def _attention(q, k, v, mask, scale, out, probs, want_probs, group):
    # q, out [B, Tq, H, D]; k, v [B, T, H, D]; mask [B, T] additive; probs [B, H, Tq, T] (a dummy unless
    # want_probs); group: (batch, head) pairs per task
    nb, _, nh, d = q.shape
    t = k.shape[1]
    n_tasks = nb * nh
    for g in prange((n_tasks + group - 1) // group):
        nk, nd = (t + LANES - 1) // LANES, (d + LANES - 1) // LANES
        kpan = _zeros_aligned(nk * d * LANES).reshape((nk, d, LANES))  # lanes past T stay 0
        vpan = _zeros_aligned(nd * t * LANES).reshape((nd, t, LANES))  # lanes past D stay 0
        qp = np.empty((RB, d), np.float32)
        s_flat = _zeros_aligned(RB * nk * LANES)
        scratch = _zeros_aligned(s_flat.shape[0])
        o = _zeros_aligned(RB * nd * LANES).reshape((RB, nd * LANES))
        inv_sum = np.empty(RB, np.float32)
        for bh in range(g * group, min(n_tasks, (g + 1) * group)):
            b, h = bh // nh, bh % nh
            _attention_head(q, k, v, b, h, mask[b], scale, out, probs[b, h] if want_probs else probs[0, 0],
                            want_probs, kpan, vpan, qp, s_flat, scratch, o, inv_sum)


def _token_major(a):  # [B, H, T, D] -> its [B, T, H, D] float32 memory, C-contiguous: free for split heads' views
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 1, 3), dtype=np.float32)


def attention(q, k, v, mask, scale, return_probs=False):
    """The fused kernel; same contract as `attention_numpy`. The output is a [B, H, T, D] view of [B, T, H, D]
    memory, so `merge_heads` of it is a free reshape."""
    q, k, v = _token_major(q), _token_major(k), _token_major(v)
    nb, tq, nh, d = q.shape
    t = k.shape[1]
    mask2 = np.zeros((nb, t), np.float32) if mask is None else np.ascontiguousarray(
        np.broadcast_to(mask, (nb, 1, 1, t)).reshape(nb, t), dtype=np.float32)
    out = np.empty((nb, tq, nh, d), np.float32)
    probs = np.empty((nb, nh, tq, t), np.float32) if return_probs else np.empty((1, 1, 1, 1), np.float32)
    # Scratch is allocated per group of heads, not per head: with short sequences (16 tokens, 512 heads) nine
    # allocations per head cost as much as the maths. About 8 groups per thread keep the threads balanced.
    group = max(1, nb * nh // (8 * numba.get_num_threads()))
    _attention(q, k, v, mask2, np.float32(scale), out, probs, bool(return_probs), group)
    return out.transpose(0, 2, 1, 3), (probs if return_probs else None)
