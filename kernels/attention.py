"""Fused scaled-dot-product attention: out = softmax(q k^T * scale + mask) v, per batch and head.
Queries and keys may differ in number (Tq, Tk): the embedding-only forward asks for the first token's row only.

The NumPy twin materialises all [B, H, T, T] scores. The Numba kernel runs a group of (batch, head) pairs per
parallel task (its scratch allocated once per group) and walks each head's queries a block of rows at a time,
so only a block x T of scores exists at once (it stays in L1/L2). Per block:
  1. scores q k^T, stored as score * scale + mask while keeping each row's max; padded key columns get -inf;
  2. exp(score - row max) over the whole block as one flat vectorised loop (`_exp_row`): short rows (T = 16,
     77) would otherwise spend most of their time in the scalar remainder of a per-row loop; padded columns
     give exactly 0;
  3. p v, each output row divided by its row sum at the store, so probabilities are only normalised when they
     are asked for.
Past SHORT keys (77-token texts, an image's 257) both products run on the GEMM's register tile
(`_tile.panel_tile`, see matmul.py), k and v packed per head as its panels: k as panels of LANES keys
(scores: ROWS queries x LANES keys per tile, a sum over D), v as panels of LANES columns of D (p v: a sum over
the keys). That is the GEMM's speed without horizontal sums; the keys are padded to whole panels (257 -> 320
on AVX-512) in the scores only. For short sequences that padding would be most of the work (16 keys in a
panel of 64), so they use a 4 x 4 tile of dot products over D (`_tile.dot_tile`) for the scores and, for
p v, axpys over D (out_i += p_ij v_j), MR rows and NR keys per pass: each load of v serves MR rows and each
accumulator store NR keys (one row and key per pass waited on store-to-load latency); operands zero-padded
to the tile.
Either way a query row's result does not depend on the other rows. One parallel region per call.
q, k and v may be the strided views that splitting heads gives ([B, T, H, D] memory seen as [B, H, T, D]):
each task packs its head's rows into contiguous scratch anyway, so nothing is copied up front, and the output
is written in [B, T, H, D] order, so merging the heads back is free (4 fewer [B, T, C] copies per layer).
"""
import numba
import numpy as np
from numba import njit, prange, types

from ._jit import MODEL, array, kernel
from ._tile import JIT, MR, NR, dot_tile, panel_tile
from ._tile import PANEL_LANES as LANES
from ._tile import PANEL_ROWS as ROWS
from .elementwise import _exp_row, row_max

RB = 32  # query rows per block of scores, up to SHORT keys
SHORT = 24  # up to this many keys dot products over D and p v as axpys; past it the panel tile (its keys padded to
# whole panels: 16 keys in 64 lanes ran 0.8x, 32 in 64 1.09x, 77 in 128 1.5x the short path on Zen 5)
LONG_RB = 8 * ROWS  # query rows per block past SHORT keys: whole row tiles


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


@njit(inline="always", **JIT)
def _store_scores(s, i0, j0, tile, t, scale, mask_b, row_max):
    # s[i0 + i, j0 + j] = tile * scale + mask (-inf for padded keys j0 + j >= t), row_max[i0 + i] updated
    for i in range(MR):
        m = row_max[i0 + i]
        for j in range(NR):
            if j0 + j < t:
                x = tile[i][j] * scale + mask_b[j0 + j]
                s[i0 + i, j0 + j] = x
                m = max(m, x)
            else:
                s[i0 + i, j0 + j] = -np.inf
        row_max[i0 + i] = m


@njit(inline="always", **JIT)
def _rows_times(p, i0, m, red, acc):  # acc[:MR, :n] = p[i0:i0 + MR, :red] @ m[:red, :n]; red a multiple of NR
    # axpys over the rows of m, vectorised over n: MR rows and NR rows of m per pass over acc, so each load of m
    # serves MR rows and each store of acc NR products (one per pass waited on store-to-load latency)
    for i in range(MR):
        for j in range(acc.shape[1]):
            acc[i, j] = 0.0
    for r in range(0, red, NR):
        a0, a1, a2, a3 = p[i0, r], p[i0, r + 1], p[i0, r + 2], p[i0, r + 3]
        b0, b1, b2, b3 = p[i0 + 1, r], p[i0 + 1, r + 1], p[i0 + 1, r + 2], p[i0 + 1, r + 3]
        c0, c1, c2, c3 = p[i0 + 2, r], p[i0 + 2, r + 1], p[i0 + 2, r + 2], p[i0 + 2, r + 3]
        e0, e1, e2, e3 = p[i0 + 3, r], p[i0 + 3, r + 1], p[i0 + 3, r + 2], p[i0 + 3, r + 3]
        for j in range(acc.shape[1]):
            m0, m1, m2, m3 = m[r, j], m[r + 1, j], m[r + 2, j], m[r + 3, j]
            acc[0, j] += a0 * m0 + a1 * m1 + a2 * m2 + a3 * m3
            acc[1, j] += b0 * m0 + b1 * m1 + b2 * m2 + b3 * m3
            acc[2, j] += c0 * m0 + c1 * m1 + c2 * m2 + c3 * m3
            acc[3, j] += e0 * m0 + e1 * m1 + e2 * m2 + e3 * m3


@njit(**JIT)  # not inlined into the parallel kernel: its compile took 14 s inlined, 8 s not
def _short_head(q, k, v, mask_b, scale, out, probs, want_probs, kp, vp, acc, qp, s_flat, scratch, row_max,
                inv_sum):
    # one head of up to SHORT keys: q, out [Tq, D]; k, v [T, D]; mask_b [T]; probs [Tq, T] (written if
    # want_probs); the rest scratch
    tq, d = q.shape
    t = k.shape[0]
    tp, dp = kp.shape
    s = s_flat.reshape((RB, tp))
    shifted = scratch.reshape((RB, tp))
    # Element loops, not slice assignments: Numba compiles each slice assignment of a new pair of array types
    # into a function of its own, and these copies cost 6 of the kernel's 17 s of compiling.
    for j in range(t):
        for c in range(d):
            kp[j, c] = k[j, c]
            vp[j, c] = v[j, c]
    for r0 in range(0, tq, RB):
        rb = min(RB, tq - r0)
        rbp = (rb + MR - 1) // MR * MR
        for i in range(rbp):
            for c in range(d):
                qp[i, c] = q[r0 + i, c] if i < rb else np.float32(0.0)
            row_max[i] = -np.inf
        for i0 in range(0, rbp, MR):  # [rb, D] x [T, D] -> [rb, T]
            for j0 in range(0, tp, NR):
                _store_scores(s, i0, j0, dot_tile(qp, i0, kp, j0, 0, dp), t, scale, mask_b, row_max)
        for i in range(rbp):
            m = row_max[i]
            for j in range(tp):
                shifted[i, j] = s[i, j] - m  # stable: the largest exponent is 0
        blk = scratch[:rbp * tp]
        _exp_row(blk, s_flat[:rbp * tp], blk)  # exp reads its input before reusing it as scratch
        for i in range(rbp):
            total = np.float32(0.0)
            for j in range(tp):
                total += s[i, j]
            inv_sum[i] = np.float32(1.0) / total
        for i0 in range(0, rb, MR):  # out = p v as axpys over D; padded rows are computed, not stored; padded
            _rows_times(s, i0, vp, tp, acc)  # keys have p = 0, v = 0
            for i in range(min(MR, rb - i0)):
                for dd in range(d):
                    out[r0 + i0 + i, dd] = acc[i, dd] * inv_sum[i0 + i]
        if want_probs:
            for i in range(rb):
                for j in range(t):
                    probs[r0 + i, j] = s[i, j] * inv_sum[i]


@njit(**JIT)
def _long_head(q, k, v, mask_b, scale, out, probs, want_probs, kpan, vpan, qp, s_flat, scratch, o, inv_sum):
    # one head past SHORT keys, on the GEMM's panel tile: scores = q k^T with k packed as panels of LANES keys
    # (kpan [ceil(T / LANES), D, LANES], the weights' layout), p v with v as panels of LANES columns of D (vpan
    # [ceil(D / LANES), T, LANES]); q, out [Tq, D]; k, v [T, D]; the rest scratch for LONG_RB query rows
    tq, d = q.shape
    t = k.shape[0]
    tp = kpan.shape[0] * LANES
    s = s_flat.reshape((LONG_RB, tp))
    shifted = scratch.reshape((LONG_RB, tp))
    for j in range(t):  # element loops, not slice assignments (see _short_head)
        for c in range(d):
            kpan[j // LANES, c, j % LANES] = k[j, c]
            vpan[c // LANES, j, c % LANES] = v[j, c]
    for r0 in range(0, tq, LONG_RB):
        rb = min(LONG_RB, tq - r0)
        for i in range(rb):
            for c in range(d):
                qp[i, c] = q[r0 + i, c]
        for p in range(kpan.shape[0]):  # [rb, D] x [D, T] -> s [rb, T + padding]
            for i0 in range(0, rb, ROWS):
                panel_tile(qp, i0, rb, kpan[p], 0, d, s, p * LANES, tp, False)
        for i in range(rb):  # scale, mask, -inf past the last key; each row's max
            for j in range(t):
                s[i, j] = s[i, j] * scale + mask_b[j]
            m = row_max(s[i], t)
            for j in range(t, tp):
                s[i, j] = -np.inf
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
            for c in range(d):
                out[r0 + i, c] = o[i, c] * inv_sum[i]
        if want_probs:
            for i in range(rb):
                for j in range(t):
                    probs[r0 + i, j] = s[i, j] * inv_sum[i]


@kernel(array(4, "A"), array(4, "A"), array(4, "A"), array(2), types.float32, array(4, "A", readonly=False),
        array(4, readonly=False), types.boolean, types.int64, cost=8, group=MODEL)
def _attention(q, k, v, mask, scale, out, probs, want_probs, group):
    # q, out [B, H, Tq, D]; k, v [B, H, T, D]; mask [B, T] additive; probs [B, H, Tq, T] (a dummy unless
    # want_probs); group: (batch, head) pairs per task
    nb, nh, _, d = q.shape
    t = k.shape[2]
    n_tasks = nb * nh
    for g in prange((n_tasks + group - 1) // group):
        if t > SHORT:  # (scratch for the panel tile: see _long_head)
            kpan = np.zeros(((t + LANES - 1) // LANES, d, LANES), np.float32)  # lanes past T stay 0
            vpan = np.zeros(((d + LANES - 1) // LANES, t, LANES), np.float32)  # lanes past D stay 0
            qp = np.empty((LONG_RB, d), np.float32)
            s_flat = np.empty(LONG_RB * kpan.shape[0] * LANES, np.float32)
            scratch = np.empty(s_flat.shape[0], np.float32)
            o = np.empty((LONG_RB, vpan.shape[0] * LANES), np.float32)
            inv_sum = np.empty(LONG_RB, np.float32)
            for bh in range(g * group, min(n_tasks, (g + 1) * group)):
                b, h = bh // nh, bh % nh
                _long_head(q[b, h], k[b, h], v[b, h], mask[b], scale, out[b, h],
                           probs[b, h] if want_probs else probs[0, 0], want_probs, kpan, vpan, qp, s_flat,
                           scratch, o, inv_sum)
        else:
            tp = (t + NR - 1) // NR * NR
            kp = np.zeros((tp, (d + NR - 1) // NR * NR), np.float32)  # [T, D] zero-padded: only [:t, :d] written
            vp = np.zeros((tp, d), np.float32)  # [T, D] zero-padded, for the axpy p v
            acc = np.empty((MR, d), np.float32)  # MR output rows, for the axpy p v
            qp = np.zeros((RB, kp.shape[1]), np.float32)  # one block of queries
            s_flat = np.empty(RB * tp, np.float32)  # its scores, then exp(score - max); padded keys -inf, then 0
            scratch = np.empty(RB * tp, np.float32)  # score - max, then _exp_row's scratch
            row_max = np.empty(RB, np.float32)
            inv_sum = np.empty(RB, np.float32)
            for bh in range(g * group, min(n_tasks, (g + 1) * group)):
                b, h = bh // nh, bh % nh
                _short_head(q[b, h], k[b, h], v[b, h], mask[b], scale, out[b, h],
                            probs[b, h] if want_probs else probs[0, 0], want_probs,
                            kp, vp, acc, qp, s_flat, scratch, row_max, inv_sum)


def _rows_of_d(a):  # float32 with contiguous rows of D (any other strides) as the kernel reads it, else a copy
    a = np.asarray(a)
    return a if a.dtype == np.float32 and a.strides[-1] == 4 else np.ascontiguousarray(a, dtype=np.float32)


def attention(q, k, v, mask, scale, return_probs=False):
    """The fused kernel; same contract as `attention_numpy`. The output is a [B, H, T, D] view of [B, T, H, D]
    memory, so `merge_heads` of it is a free reshape."""
    q, k, v = _rows_of_d(q), _rows_of_d(k), _rows_of_d(v)
    nb, nh, tq, d = q.shape
    t = k.shape[2]
    mask2 = np.zeros((nb, t), np.float32) if mask is None else np.ascontiguousarray(
        np.broadcast_to(mask, (nb, 1, 1, t)).reshape(nb, t), dtype=np.float32)
    out = np.empty((nb, tq, nh, d), np.float32).transpose(0, 2, 1, 3)
    probs = np.empty(q.shape[:3] + (t,), np.float32) if return_probs else np.empty((1, 1, 1, 1), np.float32)
    # Scratch is allocated per group of heads, not per head: with short sequences (16 tokens, 512 heads) nine
    # allocations per head cost as much as the maths. About 8 groups per thread keep the threads balanced.
    group = max(1, nb * nh // (8 * numba.get_num_threads()))
    _attention(q, k, v, mask2, np.float32(scale), out, probs, bool(return_probs), group)
    return out, (probs if return_probs else None)
