"""The GEMM's register tile (`panel_tile`, matmul.py's micro-kernel, also attention's; described there and in
gemm_ladder.py, step 4).

The tile size is fixed here, not a runtime value, because LLVM only vectorises loops whose body it can see in
full, and keeps a tile in registers only when its indices are constants (`stack_tile`).
"""
import llvmlite.binding as llvm
import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import FAST, JIT, helper

def target_has_avx512():
    """Does Numba compile for AVX-512? It takes NUMBA_CPU_FEATURES if set, else the host's features, whatever
    NUMBA_CPU_NAME says: on an AVX-512 host, AVX2 code needs NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=""."""
    features = numba.config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


def target_cpu():  # the CPU name Numba compiles for: NUMBA_CPU_NAME, else the host's (LLVM's name for it)
    return numba.config.CPU_NAME or llvm.get_host_cpu_name()


@intrinsic
def stack_tile(typingctx, rows, cols):  # -> [rows, cols] float32 on the stack, uninitialised; rows, cols constants
    """A register tile written as an array. An `np.empty` array is allocated by Numba's runtime, which LLVM
    cannot see through (it might alias A or B), so every `acc[i, j] +=` would stay a load and a store. A
    stack buffer (`alloca`) of constant size whose indices are constants once the loops over i and j are
    unrolled is split by LLVM (SROA) into scalars, which then live in registers.
    On an AVX-512 target the function holding the tile is compiled with 512-bit vectors: LLVM's tuning for
    Intel's AVX-512 cores (`prefer-256-bit`, for the clock drop of 512-bit code on the first of them; AMD's Zen
    4 and 5 have none) vectorises with ymm, and a tile written for 32 zmm then spills: the 6 x 64 tile as 48
    ymm accumulators, ~500 stack accesses a call (a Xeon with AMX, Numba's target `rocketlake`). These are
    clang's `-mprefer-vector-width=512` attributes, for that function only.
    On Intel's cores it is also scheduled as for Sapphire Rapids (`tune-cpu`: the schedule only, not the ISA):
    LLVM's schedule for skylake-avx512 and rocketlake hoists all ten loads of a step of the 6 x 64 tile (34
    registers live), then copies 14 accumulators between registers and spills one every step; sapphirerapids'
    (like znver4's) puts each load of W beside its FMAs, and the same tile fits 32 registers with no spill."""
    if not (isinstance(rows, types.IntegerLiteral) and isinstance(cols, types.IntegerLiteral)):
        return None
    r, c = rows.literal_value, cols.literal_value
    tile = types.Array(types.float32, 2, "C")

    def codegen(context, builder, sig, args):
        if target_has_avx512():  # llvmlite's attribute set takes only its known names: add these as a set's
            for key in ("prefer-vector-width", "min-legal-vector-width"):
                set.add(builder.function.attributes, f'"{key}"="512"')
            if not target_cpu().startswith("znver"):  # (AMD's own schedule is clean; this one unvectorised it)
                set.add(builder.function.attributes, '"tune-cpu"="sapphirerapids"')
        f32 = context.get_value_type(types.float32)
        data = cgutils.alloca_once(builder, f32, size=r * c)
        array = context.make_array(tile)(context, builder)
        intp = context.get_value_type(types.intp)
        context.populate_array(array, data=data, shape=[intp(r), intp(c)], strides=[intp(4 * c), intp(4)],
                               itemsize=intp(4), meminfo=None)
        return array._getvalue()
    return tile(rows, cols), codegen


# The GEMM's tile by register file (the register budget is in matmul.py's docstring): ROWS rows of A (broadcast)
# x LANES columns of C (4 vectors: zmm or ymm), the panel width the weights are packed to
PANEL_ROWS, PANEL_LANES = (6, 64) if target_has_avx512() else (3, 32)
# No reassociation in the tile: each C element must stay one multiply-add chain in k order (the GEMM's
# row-independence) whatever the tile shape around it; nothing here needs a reduction vectorised.
TILE = dict(JIT, fastmath=FAST - {"reassoc"})


@helper(**TILE)  # a call per tile, not inlined: the same speed, and less to compile
def panel_tile(a, i0, m, wp, k0, kc, c, j0, n, accumulate):
    # a [M, K]; wp [K, LANES]: W[j0:j0+LANES, :] k-major -> c[i0+r, j0+j] (+)= sum_k a[i0+r, k] wp[k, j]
    # for the part inside [m, n]; rows of a past m - 1 read row m - 1 (computed, not stored)
    acc = stack_tile(PANEL_ROWS, PANEL_LANES)
    for r in range(PANEL_ROWS):
        for j in range(PANEL_LANES):
            acc[r, j] = 0.0
    for k in range(kc):  # a rank-1 update per k: LANES / lanes vector loads of W, one broadcast per row of A
        kk = np.uint64(k0 + k)  # unsigned: no negative-index wrap-around check in the loop
        for j in range(PANEL_LANES):  # (j outside r: LLVM vectorises this loop and unrolls r)
            wj = wp[kk, j]
            for r in range(PANEL_ROWS):
                acc[r, j] += a[np.uint64(min(i0 + r, m - 1)), kk] * wj
    if PANEL_LANES == 64:  # AVX-512 (a global constant: only one branch is compiled)
        # Constant loop bounds (r < m - i0 and j0 + j < n tested inside), so every index into acc is a constant
        # and LLVM keeps the tile in registers from the zeroing to the stores; with the loop to
        # min(ROWS, m - i0) below, acc goes through the stack (a memset, 24 stores and reloads a call): 152 ->
        # 200 GFLOP/s at kc = 32, 219 -> 225 at kc = 512 (Zen 5, one thread). The AVX2 build ran slower this
        # way (71 -> 54 at kc = 32, 109 -> 105 at 512): it keeps the loop.
        whole = j0 + PANEL_LANES <= n
        for r in range(PANEL_ROWS):
            if r < m - i0:
                cr = c[np.uint64(i0 + r)]
                if whole:  # a whole row of the tile: vector stores
                    for j in range(PANEL_LANES):
                        if accumulate:
                            cr[np.uint64(j0 + j)] += acc[r, j]
                        else:
                            cr[np.uint64(j0 + j)] = acc[r, j]
                else:
                    for j in range(PANEL_LANES):
                        if j0 + j < n:
                            if accumulate:
                                cr[np.uint64(j0 + j)] += acc[r, j]
                            else:
                                cr[np.uint64(j0 + j)] = acc[r, j]
    else:
        for r in range(min(PANEL_ROWS, m - i0)):
            cr = c[np.uint64(i0 + r)]
            if j0 + PANEL_LANES <= n:  # a whole row of the tile: constant bounds, vector stores
                for j in range(PANEL_LANES):
                    if accumulate:
                        cr[np.uint64(j0 + j)] += acc[r, j]
                    else:
                        cr[np.uint64(j0 + j)] = acc[r, j]
            else:
                for j in range(n - j0):
                    if accumulate:
                        cr[np.uint64(j0 + j)] += acc[r, j]
                    else:
                        cr[np.uint64(j0 + j)] = acc[r, j]
