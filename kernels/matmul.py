"""Single-precision GEMM `C = A @ W.T` (W a Linear's [out, in] weight): a BLIS-style kernel on packed weights.

The maths is one line (`matmul_nt_numpy`). The kernel is the GotoBLAS/BLIS GEMM of `gemm_ladder.py` (steps 4-5:
an outer-product micro-kernel, packed panels, cache blocking, parallel blocks), with the weights packed once
(`pack_panels`, kept by altclip_np/panels.py in a memory-mapped cache file) instead of on every call.
  - The weights are packed into panels of LANES rows of W, k-major (`wp[p, k, j] = W[p * LANES + j, k]`, zero
    lanes past N): per step of k the micro-kernel (`_tile.panel_tile`) loads LANES consecutive floats of W as
    vectors and broadcasts ROWS values of A, one from each of ROWS rows of A read where they lie, and adds
    their outer product to ROWS x LANES accumulators that stay in registers for all KC steps. One contiguous
    stream of W per tile, and C's tile is a block of whole rows, stored as vectors.
  - Why packed once: the weights are read from memory once per call (the model's M is small beside W's
    size); packing W on every call would add a copy of every weight to every forward (45% at M = 128), and
    broadcasting W from its rows in place (the kernel before this one, A packed and loaded as vectors) kept
    ten streams of W, stored C transposed and padded M to whole panels of 32 rows (11% at M = 257): 0.65-0.9x
    this kernel's speed. `matmul_nt` packs per call, for a weight that has no panels.
  - A's rows are broadcast in place, clamped to the last row (rows past M are computed and not stored), so M
    needs no padding: M = 257 wastes at most ROWS - 1 rows of one tile.
  - Every element of C is, per KC block, one chain of multiply-adds in k order (the tile is compiled without
    reassociation), added to C block after block: the bits of a row do not depend on the other rows of A or
    on the tile that computed it, so an image gives the same bits alone or in any batch.
  - The tile by register file (`_tile.PANEL_ROWS, PANEL_LANES`), four vectors of W wide: AVX-512 (32 zmm of 16
    floats) 6 x 64: 6 x 4 = 24 accumulators + 6 broadcasts + 2 vectors of W in flight = 32, so the k loop is 6
    broadcasts, 4 loads and 24 FMAs and nothing else; AVX2 (16 ymm of 8 floats) 3 x 32: 12 accumulators + 3
    broadcasts + 1 of W = 16. Per step of k that is one broadcast for every 4 FMAs: the broadcasts and loads, not
    the FMAs, were what held the earlier 8 x 32 (one per 2 FMAs) back. W's micro-panel streams from L2 (below),
    so the rows are what W's 256 bytes a step are spent on: 6 rows make them 24 FMAs instead of 5 rows' 20. On a
    Xeon with AMX under KVM (model 167, Numba's `rocketlake`), 2 threads, weights cold (48 distinct), GFLOP/s,
    4 interleaved rounds: 5 x 64 -> 6 x 64 at 257 x 1024 x 4096 312-329 -> 335-346, 257 x 4096 x 1024
    308-321 -> 333-339, 616 x 1024 x 3072 327-346 -> 348-359, 128 x 1024 x 4096 even. It takes
    `_tile.stack_tile`'s schedule for Sapphire Rapids: LLVM's own for this Xeon spilled the 6 x 64 tile every
    step (5 x 64 was the tile while it did: 175 against 165 GFLOP/s in L1, one thread).
    Measured on Zen 5 (one thread, in L1, GFLOP/s; a pure-FMA loop 236): 6 x 64 234, 4 x 64 230, 8 x 32 209,
    12 x 32 112 (spills), 16 x 16 150 (broadcasts folded into the FMAs); AVX2 build 3 x 32 110, 5 x 16 105,
    4 x 32 66 (spills) of 118.
    LLVM vectorises for Intel's AVX-512 cores with ymm unless asked for zmm (`_tile.stack_tile` asks): as 48 ymm
    accumulators the tile spilled, 35-46 GFLOP/s at 2 threads against 117-185 asked (Xeon with AMX, model 167).
  - Blocking: KC = 1024 of K per tile call (W's micro-panel, 1024 x 64 x 4 B = 256 KiB, stays in L2 for all of
    a task's row tiles; A's ROWS rows stream from L1/L2). K = 1024 is then one block, written once instead of
    written and added to: on Zen 5 KC = 1024 measured +2-8% over 512 at 2 threads, 2048 within 1% of 1024,
    384 1-5% slower than 512 (on the Xeon 64-512 were even with or slower than 1024). A task is a block of MC
    rows x NT columns of C; for each KC block it walks its W micro-panels and, for each, its row tiles. MC =
    258 (43 tiles of 6, or 86 of 3 on AVX2) keeps an image's 257 rows in one task row: 256 made a second, 1-row
    task that read each weight again.
  - `prange` over tasks, handed out one at a time (`parallel_chunksize(1)`): on a shared 2-core machine a
    thread whose core is busy (another process, OpenBLAS's spinning worker) takes fewer tasks instead of
    holding up the GEMM. Each task writes only its block of C.
  - The epilogue act(C + bias) + residual (`elementwise.epilogue_row`) runs on each task's block as soon as
    it is done, while the block is in cache: one call instead of a GEMM and a row pass.
"""
import numba
import numpy as np
from numba import prange, types

from ._jit import MODEL, array, kernel
from ._tile import PANEL_LANES as LANES
from ._tile import PANEL_ROWS as ROWS
from ._tile import panel_tile
from .elementwise import ACT_NONE, _res, _vec, bias_act_residual_numpy, epilogue_row

KC = 1024  # K per micro-kernel call
IMAGE_ROWS = 257  # an image's tokens at 224 px
# rows of A (C) per task: whole tiles (a tile's rows past its task would be stored into the next task's), >= 257,
# so an image's rows read each weight once (258 on AVX-512 and on AVX2)
MC = -(-IMAGE_ROWS // ROWS) * ROWS
NT = 128  # columns of C (rows of W) per task: whole panels (a multiple of LANES)


def matmul_nt_numpy(a, b, bias=None, act=ACT_NONE, residual=None):  # [M, K], [N, K] -> [M, N]
    """C[m, n] = sum_k A[m, k] B[n, k], then act(C + bias) + residual (bias [N], residual [M, N], or None)."""
    return bias_act_residual_numpy(a @ b.T, bias, act, residual)


def pack_panels_numpy(w, lanes=LANES):  # [N, K] -> [ceil(N / lanes), K, lanes]
    """wp[p, k, j] = w[p * lanes + j, k], zeros past N: panels of `lanes` rows of W, k-major."""
    n, k = w.shape
    panels = -(-n // lanes)
    padded = np.zeros((panels * lanes, k), np.float32)
    padded[:n] = w
    return np.ascontiguousarray(padded.reshape(panels, lanes, k).transpose(0, 2, 1))


@kernel(array(2, "A"), array(3, readonly=False), cost=1, group=MODEL)
def _pack_panels(w, wp):  # [N, K] -> wp [ceil(N / LANES), K, LANES] (written)
    n, k_total = w.shape
    for p in prange(wp.shape[0]):
        for k in range(k_total):  # (an element loop: a slice assignment compiles into a function of its own)
            for j in range(LANES):
                wp[p, k, j] = w[p * LANES + j, k] if p * LANES + j < n else np.float32(0.0)


def empty_aligned(shape, align=64):  # -> a float32 array of `shape` whose data starts on an `align`-byte boundary
    """np.empty's data is 16 bytes past a page boundary (glibc's mmap'd chunks), so every 64-byte vector load of
    it straddles two cache lines. The tile loads W's panels as whole vectors: on the Xeon (model 167) panels at
    16 mod 64 ran the GEMM at 250-260 GFLOP/s, 64-byte aligned ones (as the panel store's page-aligned memory
    map is) at 310-330, 2 threads, at 257 rows."""
    n = int(np.prod(shape))
    buf = np.empty(n + align // 4, np.float32)
    start = (-buf.ctypes.data % align) // 4
    return buf[start:start + n].reshape(shape)


def pack_panels(w):  # [N, K] -> [ceil(N / LANES), K, LANES] float32, as pack_panels_numpy
    """The weight in the GEMM's panels, for `matmul_panels` (in parallel), 64-byte aligned."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"pack_panels expects a [N, K] weight; got shape {w.shape}")
    wp = empty_aligned((-(-w.shape[0] // LANES), w.shape[1], LANES))
    if w.size:  # (an empty w has empty panels: nothing to write)
        _pack_panels(w, wp)
    return wp


@kernel(array(2), array(3), types.int64, array(2, readonly=False), array(1), types.int64, array(2), cost=4,
        group=MODEL)
def _matmul_panels(a, wp, n, c, bias, act, residual):  # [M, K], panels of [N, K] -> c [M, N] (written)
    # then c = act(c + bias) + residual, with bias [N] or [0] and residual [M, N] or [0, 0] for none
    m, k_total = a.shape
    epilogue = bias.shape[0] > 0 or act != ACT_NONE or residual.shape[0] > 0
    n_blocks = (n + NT - 1) // NT
    m_blocks = (m + MC - 1) // MC
    for task in prange(n_blocks * m_blocks):
        n0 = task // m_blocks * NT
        n1 = min(n, n0 + NT)
        m0 = task % m_blocks * MC
        m1 = min(m, m0 + MC)
        for k0 in range(0, k_total, KC):
            kc = min(KC, k_total - k0)
            for j0 in range(n0, n1, LANES):
                for i0 in range(m0, m1, ROWS):
                    panel_tile(a, i0, m, wp[j0 // LANES], k0, kc, c, j0, n1, k0 > 0)
        if epilogue:
            e, scratch = np.empty(n1 - n0, np.float32), np.empty(n1 - n0, np.float32)
            for i in range(m0, m1):
                epilogue_row(c, i, n0, n1, bias, act, residual, e, scratch)


def matmul_panels(a, wp, n, out=None, bias=None, act=ACT_NONE, residual=None):  # [M, K], panels -> [M, N]
    """act(a @ w.T + bias) + residual in float32, w [N, K] given as its panels `wp` (`pack_panels(w)`, or a
    read-only memory map of them): the contract of `matmul_nt_numpy`."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != 2 or wp.ndim != 3 or wp.shape[1] != a.shape[1] or wp.shape[2] != LANES \
            or not 0 <= n <= wp.shape[0] * LANES or wp.dtype != np.float32:
        raise ValueError(f"matmul_panels expects a [M, K] and float32 panels [>= N / {LANES}, K, {LANES}] of a "
                         f"[N, K] weight; got {a.shape}, {wp.dtype} {wp.shape}, N = {n}")
    m = a.shape[0]
    if out is None:
        out = np.empty((m, n), np.float32)
    elif out.dtype != np.float32 or not out.flags.c_contiguous or out.shape != (m, n):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(m, n)}, got "
                         f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not C-contiguous)'}")
    if m == 0 or n == 0 or a.shape[1] == 0:  # nothing to sum (K = 0: C is act(0 + bias) + residual)
        out[...] = bias_act_residual_numpy(np.zeros((m, n), np.float32), bias, act, residual)
        return out
    with numba.parallel_chunksize(1):  # dynamic scheduling: a thread on a busy core just takes fewer tasks
        _matmul_panels(a, np.ascontiguousarray(wp), n, out, _vec(bias), act, _res(residual, n))
    return out


def matmul_nt(a, b, out=None, bias=None, act=ACT_NONE, residual=None):  # [M, K], [N, K] -> [M, N]
    """act(a @ b.T + bias) + residual with the Numba GEMM, packing `b` for this call (the contract of
    `matmul_nt_numpy`). A weight used more than once is faster packed once: `matmul_panels`."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"matmul_nt expects a [M, K] and b [N, K]; got {a.shape} and {b.shape}")
    return matmul_panels(a, pack_panels(b), b.shape[0], out, bias, act, residual)
