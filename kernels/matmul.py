"""Single-precision GEMM `C = A @ W.T` (W in the checkpoint's [out, in] layout): a BLIS-style kernel.

The maths is one line (`matmul_nt_numpy`). The kernel is the GotoBLAS/BLIS GEMM of `gemm_ladder.py` (steps 4-5:
an outer-product micro-kernel, packing, cache blocking, parallel blocks) with one change that suits a model:
the operands swap roles, so the weights are never packed.
  - The micro-kernel (`_tile.outer_tile`) computes a tile of C^T = W A^T: per step of k it loads MR values
    of A as vectors and broadcasts NR values of W, one from each of NR rows of W, and adds their outer product
    to MR x NR accumulators that stay in registers for all KC steps. Broadcasts read W where it lies (each
    row of W is contiguous in k), so the weights, memory-mapped from the checkpoint, are read once per call and
    never copied; only A (the activations: M x K, small beside W at the model's M) is packed, once per call,
    into k-major panels of MR rows (zero rows past M). The classic layout packs the broadcast operand
    instead; here that would copy all of W on every call (as the dot-product kernel this replaced did).
  - Every element of C is one chain of multiply-adds in k order whatever lane or panel computes it, so a row's
    result does not depend on the other rows of A: an image gives the same bits alone or in any batch. (Dot
    products for the rows past the last whole panel, tried to spare a padded panel's work, 11% of M = 257,
    summed in another order and broke that.)
  - The tile by register file (`_tile.OUTER_MR, OUTER_NR`): AVX-512 (32 zmm of 16 floats) 32 x 10: 2 x 10 = 20
    accumulators + 2 vectors of A + up to 10 broadcasts = 32; AVX2 (16 ymm of 8 floats) 32 x 3: 4 x 3 = 12
    accumulators + 3 broadcasts + 1 vector of A loaded at a time = 16. Both spill-free (the ladder's analysis,
    `gemm_ladder.py` step 4); the 4 x 4 dot-product tile of before kept 24 vectors live and spilled on AVX2.
  - Blocking: KC = 512 of K per micro-kernel call (C's tile is read and written once per KC; longer KC amortises
    that, shorter keeps A's micro-panel, 32 x 512 x 4 B = 64 KiB, in L1/L2). A task is a block of MC rows x NT
    columns of C; it walks its A micro-panels and, for each, the NT / NR micro-panels of W (NT x KC x 4 B =
    256 KiB: L2).
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
from ._tile import OUTER_MR as MR
from ._tile import OUTER_NR as NR
from ._tile import outer_tile
from .elementwise import ACT_NONE, _res, _vec, bias_act_residual_numpy, epilogue_row

KC = 512  # K per micro-kernel call (1024 and 2048 measured no faster with the weights streamed from memory)
MC = 256  # rows of A (C) per task
NT = NR * -(-128 // NR)  # columns of C (rows of W) per task: about 128, a multiple of NR


def matmul_nt_numpy(a, b, bias=None, act=ACT_NONE, residual=None):  # [M, K], [N, K] -> [M, N]
    """C[m, n] = sum_k A[m, k] B[n, k], then act(C + bias) + residual (bias [N], residual [M, N], or None)."""
    return bias_act_residual_numpy(a @ b.T, bias, act, residual)


@kernel(array(2), array(2), array(2, readonly=False), array(1), types.int64, array(2), cost=6, group=MODEL)
def _matmul_nt(a, w, c, bias, act, residual):  # [M, K], [N, K] -> c [M, N] (written)
    # then c = act(c + bias) + residual, with bias [N] or [0] and residual [M, N] or [0, 0] for none
    m, k_total = a.shape
    n = w.shape[0]
    panels = (m + MR - 1) // MR
    ap = np.empty((panels, k_total, MR), np.float32)  # A^T in k-major panels of MR rows, zero rows past M
    for p in prange(panels):
        for k in range(k_total):  # (an element loop: a slice assignment compiles into a function of its own)
            for r in range(MR):
                ap[p, k, r] = a[p * MR + r, k] if p * MR + r < m else np.float32(0.0)
    epilogue = bias.shape[0] > 0 or act != ACT_NONE or residual.shape[0] > 0
    n_blocks = (n + NT - 1) // NT
    pm = MC // MR  # A micro-panels per task
    m_blocks = (panels + pm - 1) // pm
    for task in prange(n_blocks * m_blocks):
        n0 = task // m_blocks * NT
        n1 = min(n, n0 + NT)
        p0 = task % m_blocks * pm
        p1 = min(panels, p0 + pm)
        for k0 in range(0, k_total, KC):
            kc = min(KC, k_total - k0)
            for p in range(p0, p1):
                for j0 in range(n0, n1, NR):
                    outer_tile(ap[p, k0:k0 + kc], w, j0, k0, kc, c, p * MR, m, n1, k0 > 0)
        if epilogue:
            e, scratch = np.empty(n1 - n0, np.float32), np.empty(n1 - n0, np.float32)
            for i in range(p0 * MR, min(m, p1 * MR)):
                epilogue_row(c, i, n0, n1, bias, act, residual, e, scratch)


def matmul_nt(a, b, out=None, bias=None, act=ACT_NONE, residual=None):  # [M, K], [N, K] -> [M, N]
    """act(a @ b.T + bias) + residual in float32 with the Numba GEMM (the same contract as `matmul_nt_numpy`).
    `b` may be a read-only memory map; it is never copied."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"matmul_nt expects a [M, K] and b [N, K]; got {a.shape} and {b.shape}")
    if out is None:
        out = np.empty((a.shape[0], b.shape[0]), np.float32)
    elif out.dtype != np.float32 or not out.flags.c_contiguous or out.shape != (a.shape[0], b.shape[0]):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(a.shape[0], b.shape[0])}, got "
                         f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' (not C-contiguous)'}")
    if 0 in a.shape or b.shape[0] == 0:  # nothing to sum (K = 0: C is act(0 + bias) + residual)
        out[...] = matmul_nt_numpy(a, b, bias, act, residual)
        return out
    with numba.parallel_chunksize(1):  # dynamic scheduling: a thread on a busy core just takes fewer tasks
        _matmul_nt(a, b, out, _vec(bias), act, _res(residual, out.shape[1]))
    return out
