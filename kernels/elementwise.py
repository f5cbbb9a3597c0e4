"""The small kernels that run between GEMMs: layer_norm, gelu (erf form), quick_gelu, softmax, and the
GEMM epilogue act(y + bias) + residual in one pass (the Numba GEMM runs `epilogue_row` on each block of its
output while the block is still in cache; after an OpenBLAS GEMM `bias_act_residual_` makes one pass).

Each works on rows of a 2-D float32 array (the wrappers fold leading axes), `prange` over rows, with a
vectorisable inner loop. NumPy has no vectorised erf and Numba (without Intel's SVML) calls libm's exp/erf
one element at a time, so `exp` and `erf` are written here as polynomials LLVM can vectorise:
  exp: Cephes' expf (Cody-Waite reduction x = n ln2 + r, degree-6 polynomial in r, times 2^n), ~1 ulp.
  erf: the rational approximation used by Eigen and XLA, x p(x^2) / q(x^2) on [-4, 4], |error| < 5e-7.
The NumPy twins below compute the same formulas, so the tests compare like with like; the erf twin is
checked against math.erf in the tests.
"""
import numpy as np
from numba import njit, prange, types

from ._jit import JIT, MODEL, array, kernel
from ._tile import stack_tile

_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI exact in a few bits
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_P = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                       4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_EXP_LO, _EXP_HI = np.float32(-87.33654), np.float32(88.0)  # keeps 2^n a normal float
_ERF_ALPHA = tuple(np.float32(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                                           -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                                           -1.60960333262415e-02))
_ERF_BETA = tuple(np.float32(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                                          -7.37332916720468e-03, -1.42647390514189e-02))
_SQRT1_2 = np.float32(0.70710678118654752)
_QUICK = np.float32(1.702)
ACT_NONE, ACT_GELU, ACT_QUICK_GELU = 0, 1, 2


# ---- NumPy twins: the maths ------------------------------------------------------------------------------

def horner(coeffs, x):  # coeffs[0] x^(n-1) + ... + coeffs[n-1]: arrays here, float32 scalars in the kernels
    p = coeffs[0]
    for c in coeffs[1:]:
        p = p * x + c
    return p


def exp_numpy(x):  # Cephes expf, elementwise: ~1 ulp on [-87.3, 88]; 0 below, exp(88) above
    x = np.asarray(x, np.float32)
    underflow = x < _EXP_LO
    x = np.clip(x, _EXP_LO, _EXP_HI)
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - n * _LN2_HI - n * _LN2_LO
    p = horner(_EXP_P, r) * r * r + r + np.float32(1.0)
    return np.where(underflow, np.float32(0.0), p * np.ldexp(np.float32(1.0), n.astype(np.int32)).astype(np.float32))


def erf_numpy(x):  # x p(x^2) / q(x^2), x clamped to [-4, 4] where erf is 1 to float32 precision
    x = np.clip(np.asarray(x, np.float32), np.float32(-4.0), np.float32(4.0))
    x2 = x * x
    return x * horner(_ERF_ALPHA, x2) / horner(_ERF_BETA, x2)


def gelu_numpy(x):  # x/2 (1 + erf(x / sqrt 2)): transformers' "gelu"
    return np.float32(0.5) * x * (np.float32(1.0) + erf_numpy(x * _SQRT1_2))


def quick_gelu_numpy(x):  # x sigmoid(1.702 x): CLIP's "quick_gelu"
    return x / (np.float32(1.0) + exp_numpy(-_QUICK * x))


def layer_norm_numpy(x, weight, bias, eps):  # over the last axis, biased variance as torch does
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * weight + bias


def softmax_numpy(x, scale=1.0, mask=None):  # softmax(x * scale + mask) over the last axis
    """x [..., R, n], mask additive [..., 1, n] (broadcast over the R rows) or None. The max is subtracted
    first so exp never overflows."""
    x = x * np.float32(scale) if mask is None else x * np.float32(scale) + mask
    e = exp_numpy(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def bias_act_residual_numpy(y, bias, act, residual):  # act(y + bias) + residual; bias, residual may be None
    if bias is not None:
        y = y + bias
    y = {ACT_NONE: lambda t: t, ACT_GELU: gelu_numpy, ACT_QUICK_GELU: quick_gelu_numpy}[act](y)
    return y if residual is None else y + residual


# ---- Numba kernels ---------------------------------------------------------------------------------------

# the twins' own polynomial, unrolled
_horner = njit(inline="always", **JIT)(horner)


@njit(inline="always", **JIT)
def _exp_row(x, out, scratch):  # x [n] -> out [n] = exp(x); scratch [n] float32, clobbered
    two_n = scratch.view(np.int32)  # 2^n built from its IEEE bits: exponent field n + 127
    for j in range(x.shape[0]):
        xj = min(max(x[j], _EXP_LO), _EXP_HI)
        n = np.floor(xj * _LOG2E + np.float32(0.5))
        r = xj - n * _LN2_HI - n * _LN2_LO
        out[j] = _horner(_EXP_P, r) * r * r + r + np.float32(1.0)
        two_n[j] = (np.int32(n) + np.int32(127)) << 23 if x[j] >= _EXP_LO else 0  # 0.0: exp underflows to 0
    for j in range(x.shape[0]):  # a second pass, so both loops vectorise
        out[j] *= scratch[j]


@njit(inline="always", **JIT)
def _erf(x):
    x = min(max(x, np.float32(-4.0)), np.float32(4.0))
    x2 = x * x
    return x * _horner(_ERF_ALPHA, x2) / _horner(_ERF_BETA, x2)


@njit(inline="always", **JIT)
def row_max(x, n):  # max of x[:n] (-inf for n = 0)
    # 16 running maxima, then theirs: one running max is a chain LLVM does not vectorise (0.43 -> 0.15 ns per
    # element at n = 257 on Zen 5)
    acc = stack_tile(1, 16)
    for lane in range(16):
        acc[0, lane] = -np.inf
    n16 = n // 16 * 16
    for j0 in range(0, n16, 16):
        for lane in range(16):
            v = x[np.uint64(j0 + lane)]
            acc[0, lane] = v if v > acc[0, lane] else acc[0, lane]
    m = np.float32(-np.inf)
    for lane in range(16):
        m = max(m, acc[0, lane])
    for j in range(n16, n):
        m = max(m, x[j])
    return m


@njit(inline="always", **JIT)
def softmax_row(x, out, scratch):  # x [n] -> out [n] = exp(x - max) / sum; out may be x
    m = row_max(x, x.shape[0])
    for j in range(x.shape[0]):
        scratch[j] = x[j] - m
    _exp_row(scratch, out, scratch)
    s = np.float32(0.0)
    for j in range(x.shape[0]):
        s += out[j]
    inv = np.float32(1.0) / s
    for j in range(x.shape[0]):
        out[j] *= inv


# in the model group: `auto` runs it for short sequences (scores on BLAS, then this, then p v on BLAS)
@kernel(array(2), array(2, readonly=False), types.float32, array(2), types.int64, cost=3, group=MODEL)
def _softmax_rows(x, out, scale, mask, rows_per_mask):  # [R, n] -> [R, n]; mask [R / rows_per_mask, n] or [0, n]
    n = x.shape[1]
    for r in prange(x.shape[0]):
        o = out[r]
        if mask.shape[0]:
            m = mask[r // rows_per_mask]
            for j in range(n):
                o[j] = x[r, j] * scale + m[j]
        else:
            for j in range(n):
                o[j] = x[r, j] * scale
        softmax_row(o, o, np.empty(n, np.float32))


@kernel(array(2), array(1), array(1), types.float32, array(2, readonly=False), cost=1, group=MODEL)
def _layer_norm_rows(x, weight, bias, eps, out):  # [R, n], [n], [n] -> [R, n]; two passes, as the twin
    n = x.shape[1]
    for r in prange(x.shape[0]):
        xr = x[r]
        s = np.float32(0.0)
        for j in range(n):
            s += xr[j]
        mean = s / np.float32(n)
        v = np.float32(0.0)
        for j in range(n):
            d = xr[j] - mean
            v += d * d
        inv = np.float32(1.0) / np.sqrt(v / np.float32(n) + eps)
        for j in range(n):
            out[r, j] = (xr[j] - mean) * inv * weight[j] + bias[j]


@njit(inline="always", **JIT)
def epilogue_row(y, i, j0, j1, bias, act, residual, e, scratch):
    # y[i, j0:j1] = act(y[i, j0:j1] + bias[j0:j1]) + residual[i, j0:j1] in place; bias [0] / residual [0, 0]
    # for none; e, scratch [>= j1 - j0] float32 (quick_gelu's exp)
    # Slice first, then index from 0: an index like bias[j0 + j] with a run-time j0 keeps Numba's
    # negative-index wraparound in the loop, which stops it vectorising (measured 10x slower).
    yr = y[i, j0:j1]
    n = j1 - j0
    if bias.shape[0] > 0:
        br = bias[j0:j1]
        for j in range(n):
            yr[j] += br[j]
    if act == ACT_GELU:
        for j in range(n):
            yr[j] = np.float32(0.5) * yr[j] * (np.float32(1.0) + _erf(yr[j] * _SQRT1_2))
    elif act == ACT_QUICK_GELU:
        for j in range(n):
            e[j] = -_QUICK * yr[j]
        _exp_row(e[:n], e[:n], scratch[:n])
        for j in range(n):
            yr[j] = yr[j] / (np.float32(1.0) + e[j])
    if residual.shape[0] > 0:
        rr = residual[i, j0:j1]
        for j in range(n):
            yr[j] += rr[j]


@kernel(array(2, readonly=False), array(1), types.int64, array(2), cost=3)
def _bias_act_residual_rows(y, bias, act, residual):  # [R, n] in place, rows in parallel
    n = y.shape[1]
    for r in prange(y.shape[0]):
        epilogue_row(y, r, 0, n, bias, act, residual, np.empty(n, np.float32), np.empty(n, np.float32))


# ---- Python wrappers: fold leading axes into rows ----------------------------------------------------------

_NO_BIAS = np.zeros(0, np.float32)
_NO_MASK = np.zeros((0, 1), np.float32)
_NO_RESIDUAL = np.zeros((0, 0), np.float32)


def _rows(x):
    return np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])


def _vec(b):
    return _NO_BIAS if b is None else np.ascontiguousarray(b, dtype=np.float32)


def _res(r, n):  # residual [..., n] -> [R, n], or [0, 0] for none
    return _NO_RESIDUAL if r is None else _rows(r).reshape(-1, n)


def layer_norm(x, weight, bias, eps):  # [..., n], [n], [n] -> [..., n]
    x2 = _rows(x)
    out = np.empty_like(x2)
    _layer_norm_rows(x2, _vec(weight), _vec(bias), np.float32(eps), out)
    return out.reshape(x.shape)


def softmax(x, scale=1.0, mask=None, out=None):  # [..., R, n] -> softmax(x * scale + mask) over the last axis
    """mask: additive, [..., 1, n] (one row per leading index, e.g. [B, 1, 1, T] for scores [B, H, T, T]) or
    None. `out=x` works in place (attention's scores)."""
    x2 = _rows(x)
    out2 = np.empty_like(x2) if out is None else out.reshape(x2.shape)
    if mask is None:
        m, per = _NO_MASK, 1
    else:
        m = np.ascontiguousarray(mask, dtype=np.float32).reshape(-1, x.shape[-1])
        per = x2.shape[0] // m.shape[0]  # rows of x per mask row
    _softmax_rows(x2, out2, np.float32(scale), m, per)
    return out2.reshape(x.shape)


def bias_act_residual_(y, bias, act, residual):  # in place on a C-contiguous float32 y [..., n]
    """y = act(y + bias) + residual; bias [n] or None, residual [..., n] or None."""
    _bias_act_residual_rows(y.reshape(-1, y.shape[-1]), _vec(bias), act, _res(residual, y.shape[-1]))
    return y


def gelu(x):  # [...] -> [...]
    return bias_act_residual_(np.array(x, dtype=np.float32, order="C"), None, ACT_GELU, None)


def quick_gelu(x):  # [...] -> [...]
    return bias_act_residual_(np.array(x, dtype=np.float32, order="C"), None, ACT_QUICK_GELU, None)
