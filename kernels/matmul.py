"""Single-precision GEMM `C = A @ B.T` (B in the checkpoint's [out, in] layout), GotoBLAS/BLIS style.

The maths is one line (`matmul_nt_numpy`); the Numba version is about where the data sits:
  - B is cut into blocks of NC rows (output columns) x KC of K. A block is packed into a contiguous,
    zero-padded buffer (NC x KC x 4 B = 1 MiB, the size of L2) and reused against every row of A in the task.
    For M <= SMALL_M (texts, one image) the block is NC_SMALL rows, so it stays in L2 beside A and C.
  - A is walked MR rows at a time; its MR x KC micro-panel is packed too (16 KiB: it stays in L1; rows past
    M repeat the last row, so the micro-kernel never sees a ragged edge) and reused against every NR rows
    of the B block.
  - The micro-kernel (`_tile.dot_tile`) keeps an MR x NR tile of C in registers while it runs over KC. It
    vectorises over k, so each tile ends with 16 horizontal reductions; a long KC (1024) amortises them.
  - `prange` runs over tasks = (block of NC columns) x (block of up to MC rows): each task writes its own
    part of C (no write sharing). MC only matters for large M; up to M = MC a task is a whole column block.
  - The epilogue act(C + bias) + residual (`elementwise.epilogue_row`) runs on each task's block of C as soon
    as the block is done, while it is still in L2. Measured against the same GEMM followed by a separate
    row pass: within +-3% at M = 257 and 616 (the epilogue itself costs 2-6% of these GEMMs), so it is kept for
    one call instead of two, not for speed.
  - The tasks are handed out one at a time (dynamic scheduling, `parallel_chunksize(1)`), not split in
    two halves up front: on a shared 2-core machine one core is often busy for a while (another process,
    or OpenBLAS's worker thread, which spins for ~0.1 s after each numpy GEMM), and with a static split
    the whole GEMM waits for the thread on the busy core. Measured at M = 2056 right after a numpy GEMM:
    static 52-60% of OpenBLAS, dynamic 88-100%.
"""
import numba
import numpy as np
from numba import prange, types

from ._jit import MODEL, array, kernel
from ._tile import MR, NR, dot_tile, store_tile
from .elementwise import ACT_NONE, _res, _vec, bias_act_residual_numpy, epilogue_row

KC = 1024  # K per packed block: MR x KC of A (16 KiB) fits L1. 512 was 5-10% slower (more reductions per flop)
NC = 256  # rows of B (columns of C) per block: NC x KC of B (1 MiB) fits L2; fewer re-packs of A than 128
NC_SMALL, SMALL_M = 128, 512  # the block for M <= SMALL_M: measured 0-6% faster at M = 128, 512; same at 257
MC = 1024  # at most this many rows of A per task, split evenly: one task per column block up to M = 1024 (a
# 512 + 104 split of M = 616 packed each B block twice, the second time for only 104 rows: measured 2-4% slower)


def matmul_nt_numpy(a, b, bias=None, act=ACT_NONE, residual=None):  # [M, K], [N, K] -> [M, N]
    """C[m, n] = sum_k A[m, k] B[n, k], then act(C + bias) + residual (bias [N], residual [M, N], or None)."""
    return bias_act_residual_numpy(a @ b.T, bias, act, residual)


@kernel(array(2), array(2), array(2, readonly=False), array(1), types.int64, array(2), types.int64, cost=9,
        group=MODEL)
def _matmul_nt(a, b, c, bias, act, residual, nc_block):  # [M, K], [N, K] -> c [M, N] (written)
    # then c = act(c + bias) + residual, with bias [N] or [0] and residual [M, N] or [0, 0] for none
    m, k_total = a.shape
    n = b.shape[0]
    epilogue = bias.shape[0] > 0 or act != ACT_NONE or residual.shape[0] > 0
    n_blocks = (n + nc_block - 1) // nc_block
    m_blocks = max(1, (m + MC - 1) // MC)
    mc = ((m + m_blocks - 1) // m_blocks + MR - 1) // MR * MR  # rows per task, a multiple of MR
    for task in prange(n_blocks * m_blocks):
        n0 = task // m_blocks * nc_block
        nc = min(nc_block, n - n0)
        ncp = (nc + NR - 1) // NR * NR
        m0 = task % m_blocks * mc
        m1 = min(m, m0 + mc)
        bp = np.zeros((ncp, KC), np.float32)  # packed B block, rows past N stay zero
        ap = np.empty((MR, KC), np.float32)  # packed A micro-panel
        c_block = c[:, n0:n0 + nc]
        for k0 in range(0, k_total, KC):
            kc = min(KC, k_total - k0)
            # Slice copies, not element loops: Numba turns these into fast contiguous copies (element loops
            # measured ~20% slower overall).
            for j in range(nc):
                bp[j, :kc] = b[n0 + j, k0:k0 + kc]
            for i0 in range(m0, m1, MR):
                for i in range(MR):
                    ap[i, :kc] = a[min(i0 + i, m - 1), k0:k0 + kc]
                for j0 in range(0, ncp, NR):
                    tile = dot_tile(ap, 0, bp, j0, 0, kc)
                    store_tile(c_block, i0, j0, tile, m1, nc, k0 > 0)
        if epilogue:
            e, scratch = np.empty(nc, np.float32), np.empty(nc, np.float32)
            for i in range(m0, m1):
                epilogue_row(c, i, n0, n0 + nc, bias, act, residual, e, scratch)


def matmul_nt(a, b, out=None, bias=None, act=ACT_NONE, residual=None):  # [M, K], [N, K] -> [M, N]
    """act(a @ b.T + bias) + residual in float32 with the Numba GEMM (the same contract as `matmul_nt_numpy`).
    `b` may be a read-only memory map; it is never copied whole."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if out is None:
        out = np.empty((a.shape[0], b.shape[0]), np.float32)
    elif out.dtype != np.float32 or not out.flags.c_contiguous or out.shape != (a.shape[0], b.shape[0]):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(a.shape[0], b.shape[0])}, got "
                         f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not C-contiguous)'}")
    nc_block = NC_SMALL if a.shape[0] <= SMALL_M else NC
    with numba.parallel_chunksize(1):  # dynamic scheduling: a thread on a busy core just takes fewer tasks
        _matmul_nt(a, b, out, _vec(bias), act, _res(residual, out.shape[1]), nc_block)
    return out
