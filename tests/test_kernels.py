"""Every Numba kernel of `kernels/` against its NumPy twin, on awkward shapes (nothing a multiple of a tile or
block: 1 row, 1 key, a ragged last block), at float32 tolerance. No timing here: see tools/bench.py."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import altclip_np
import altclip_np.kernels as K
from altclip_np.kernels import _jit, _tile
from altclip_np.kernels.attention import RB
from conftest import TINY_CONFIGS, images, text_batch
from altclip_np.kernels.matmul import KC, LANES, MC, NT, ROWS

RNG = np.random.default_rng(0)
F32_MIN = np.finfo(np.float32).min


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def close(ours, ref, atol=1e-5, rtol=1e-5):
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=atol, rtol=rtol)


# ---- matmul --------------------------------------------------------------------------------------------------

# Nothing a multiple of the tile (ROWS rows of A x LANES rows of W), of a task (MC rows x NT columns) or of KC:
# ragged last tiles, tasks and K blocks; M > MC splits the rows into tasks too; K = 0 sums nothing
SHAPES = [(1, 1, 1), (3, 5, 7), (257, 70, 45), (5, KC + 3, NT + 5), (9, 2 * KC + 1, 2 * NT - 1), (64, 128, 256),
          (MC + 3, 70, NT + LANES + 1), (2 * MC + ROWS + 1, 33, 45), (ROWS, 40, 9), (4, 0, 3)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matmul_nt(m, k, n):
    a, b = randn(m, k), randn(n, k)
    close(K.matmul_nt(a, b), K.matmul_nt_numpy(a, b), atol=2e-5 * math.sqrt(max(k, 1)))


@pytest.mark.parametrize("act", [K.ACT_NONE, K.ACT_GELU, K.ACT_QUICK_GELU])
# one task; several, ragged, 2 K blocks; several row blocks (M > MC)
@pytest.mark.parametrize("m,k,n", [(3, 5, 7), (70, KC + 3, NT + 5), (MC + 3, 40, NT + 5)])
def test_matmul_nt_epilogue(act, m, k, n):
    # act(a b^T + bias) + residual applied to each block of C inside the GEMM, against the twin's separate steps
    a, b, bias, res = randn(m, k), randn(n, k, scale=0.1), randn(n), randn(m, n)
    for kw in ({"bias": bias, "act": act}, {"bias": bias, "act": act, "residual": res}, {"act": act, "residual": res}):
        close(K.matmul_nt(a, b, **kw), K.matmul_nt_numpy(a, b, **kw), atol=2e-5 * math.sqrt(k))


def test_matmul_nt_rows_do_not_depend_on_the_batch():
    # each element is one chain of multiply-adds in k order (per KC block) whatever tile or task computes it:
    # a row alone, in a ragged tile, a whole tile or another task gives the same bits (an image embeds alike
    # alone or in a batch)
    a, b, bias = randn(MC + ROWS + 3, 2 * KC + 9), randn(NT + 7, 2 * KC + 9), randn(NT + 7)
    whole = K.matmul_nt(a, b, bias=bias, act=K.ACT_GELU)
    for rows in (slice(0, 1), slice(3, 4), slice(ROWS - 1, ROWS + 2), slice(ROWS + 5, 3 * ROWS + 2),
                 slice(MC - 2, MC + ROWS + 3)):
        np.testing.assert_array_equal(K.matmul_nt(a[rows], b, bias=bias, act=K.ACT_GELU), whole[rows])


AVX2_CHILD = r"""
import json, sys
import numpy as np
from altclip_np.kernels import _jit, _tile, matmul as M
from altclip_np.kernels.elementwise import ACT_QUICK_GELU
# these kernels alone, compiled for the target of this process's environment
_jit.ensure([M._matmul_panels, M._pack_panels])
rng = np.random.default_rng(1)
worst = 0.0
for m, k, n in json.loads(sys.argv[1]):
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((n, k), dtype=np.float32)
    bias, res = rng.standard_normal(n, dtype=np.float32), rng.standard_normal((m, n), dtype=np.float32)
    for kw in ({}, {"bias": bias, "act": ACT_QUICK_GELU, "residual": res}):
        ours, ref = M.matmul_nt(a, b, **kw), M.matmul_nt_numpy(a, b, **kw)
        np.testing.assert_allclose(ours, ref, atol=2e-5 * max(k, 1) ** 0.5, rtol=1e-5)
        worst = max(worst, float(np.abs(ours - ref).max()))
print(json.dumps({"avx512": _tile.target_has_avx512(), "tile": [M.ROWS, M.LANES], "worst": worst}))
"""


@pytest.mark.slow
def test_matmul_nt_avx2_variant(tmp_path):
    # The AVX2 tile (3 x 32), compiled for Haswell in a child with a fresh cache, whatever this machine has
    # (on an AVX-512 host NUMBA_CPU_NAME alone keeps the host's features: NUMBA_CPU_FEATURES="" drops them).
    # Observed max abs difference from the NumPy twin: ~1.5e-4 (K = 1027, sums of ~30 in magnitude).
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
    run = subprocess.run([sys.executable, "-c", AVX2_CHILD, json.dumps(SHAPES)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["avx512"] is False and out["tile"] == [3, 32]
    assert out["worst"] < 1e-3


TILE_ASM_CHILD = r"""
import json, re
from numba import types
from altclip_np.kernels import _tile
a = types.Array(types.float32, 2, "C")
sig = (a, types.int64, types.int64, a, types.int64, types.int64, a, types.int64, types.int64, types.boolean)
_tile.panel_tile.compile(sig)  # compiled for the target of this process's environment, never run
asm = _tile.panel_tile.inspect_asm(sig)
k_loop = max(re.split(r"\n(?=\.LBB\d+_\d+:)", asm), key=lambda block: block.count("vfmadd"))  # the FMAs' block
print(json.dumps({"zmm": len(re.findall(r"vfmadd\w+\s+%zmm", asm)), "ymm": len(re.findall(r"vfmadd\w+\s+%ymm", asm)),
                  "k_loop_moves": len(re.findall(r"vmovaps\s+%zmm\d+, %zmm", k_loop)),
                  "k_loop_stack": k_loop.count("(%rsp)")}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["skylake-avx512", "rocketlake", "znver4"])
def test_the_avx512_tile_is_compiled_with_zmm(tmp_path, cpu):
    # LLVM's tuning for Intel's AVX-512 cores prefers 256-bit vectors: without the attributes _tile.stack_tile adds the
    # 6 x 64 tile compiled for skylake-avx512 (or the Xeon's rocketlake) was 48 ymm FMAs and spilled (3-4x slower).
    # Compiled, not run, so it checks both vendors on any machine: the k loop is 6 x 64 / 16 = 24 zmm FMAs, with no
    # register copies or stack accesses (with LLVM's own schedule for skylake-avx512 and rocketlake, not the
    # sapphirerapids one stack_tile asks for, it had 14 copies and a spill; none for znver4).
    features = "+avx512f,+avx512cd,+avx512bw,+avx512dq,+avx512vl,+avx2,+avx,+fma,+f16c,+bmi2"  # the CPU's own
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features)
    run = subprocess.run([sys.executable, "-c", TILE_ASM_CHILD], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out == {"zmm": 24, "ymm": 0, "k_loop_moves": 0, "k_loop_stack": 0}, out


@pytest.mark.parametrize("n,k", [(1, 1), (LANES - 1, 3), (LANES, 1), (2 * LANES + 5, 70), (3, 0)])
def test_pack_panels(n, k):
    # the kernel against its twin, and the twin against the definition wp[p, k, j] = w[p * LANES + j, k]
    w = randn(n, k)
    wp = K.pack_panels(w)
    np.testing.assert_array_equal(wp, K.pack_panels_numpy(w))
    for p, kk, j in np.ndindex(*wp.shape):
        assert wp[p, kk, j] == (w[p * LANES + j, kk] if p * LANES + j < n else 0.0)


def test_pack_panels_are_64_byte_aligned():
    # np.empty's data starts 16 bytes past a page: panels there split every zmm load across two cache lines
    # (on a Xeon, model 167, the GEMM ran at 250-260 GFLOP/s instead of 310-330)
    for n, k in [(1, 1), (LANES + 1, 70), (1024, 1024)]:
        assert K.pack_panels(randn(n, k)).ctypes.data % 64 == 0


def test_matmul_panels_read_only_and_checked():
    # panels memory-mapped from the cache file are read-only; a weight packed once gives matmul_nt's bits
    a, b, bias = randn(2 * ROWS + 1, 70), randn(NT + 3, 70), randn(NT + 3)
    wp = K.pack_panels(b)
    wp.flags.writeable = False
    np.testing.assert_array_equal(K.matmul_panels(a, wp, b.shape[0], bias=bias), K.matmul_nt(a, b, bias=bias))
    with pytest.raises(ValueError, match="panels"):
        K.matmul_panels(a, wp[:, :-1], b.shape[0])  # K does not match
    with pytest.raises(ValueError, match="panels"):
        K.matmul_panels(a, wp, wp.shape[0] * LANES + 1)  # more columns than the panels hold


def test_matmul_read_only_weight_and_out():
    a = randn(6, 33)
    b = randn(10, 33)
    b.flags.writeable = False  # a memory-mapped checkpoint weight is read-only
    out = np.full((6, 10), np.nan, np.float32)
    assert K.matmul_nt(a, b, out=out) is out
    close(out, a @ b.T, atol=1e-4)


# ---- attention -----------------------------------------------------------------------------------------------

def attention_cases():
    # nothing a multiple of the tile (ROWS queries x LANES keys or columns of D) or of a block of RB queries
    yield "seq1", (2, 3, 1, 8), None
    yield "ragged", (2, 3, RB + 5, 13), None
    yield "long", (1, 2, 2 * RB + 1, 64), None
    yield "keys-past-a-panel", (1, 2, LANES + 7, 20), None
    yield "d-past-a-panel", (1, 2, 9, LANES + 3), None
    for name, (b, h, t, d) in {"padded": (3, 2, 11, 6), "one-key": (2, 4, RB + 3, 16),
                               "panel-one-key": (2, 2, LANES + 3, 8)}.items():
        mask = np.zeros((b, 1, 1, t), np.float32)
        mask[0, ..., t // 2:] = F32_MIN  # half the keys hidden
        mask[-1, ..., 1:] = F32_MIN  # all but one key hidden
        yield name, (b, h, t, d), mask


@pytest.mark.parametrize("name,shape,mask", list(attention_cases()), ids=lambda c: c if isinstance(c, str) else "")
def test_attention(name, shape, mask):
    q, k, v = randn(*shape, scale=2.0), randn(*shape), randn(*shape)
    scale = shape[-1] ** -0.5
    out, probs = K.attention(q, k, v, mask, scale, return_probs=True)
    ref_out, ref_probs = K.attention_numpy(q, k, v, mask, scale, return_probs=True)
    close(out, ref_out)
    close(probs, ref_probs, atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    if mask is not None:
        assert np.all(probs[-1, :, :, 1:] == 0.0) and np.all(probs[-1, :, :, 0] == 1.0)
        close(out[-1], np.broadcast_to(v[-1, :, :1], v[-1].shape).copy())
    out2, none = K.attention(q, k, v, mask, scale)  # the path without probabilities gives the same output
    assert none is None
    np.testing.assert_array_equal(out2, out)


@pytest.mark.parametrize("tq,t", [(1, 9), (1, LANES + 5), (RB + 2, 5), (3, RB + 2)])
def test_attention_queries_and_keys_differ_in_number(tq, t):
    # the embedding-only forward's last layer: the first token's query against every key
    q, k, v = randn(2, 3, tq, 16, scale=2.0), randn(2, 3, t, 16), randn(2, 3, t, 16)
    mask = np.zeros((2, 1, 1, t), np.float32)
    mask[1, ..., t // 2:] = F32_MIN
    out, probs = K.attention(q, k, v, mask, 0.25, return_probs=True)
    ref_out, ref_probs = K.attention_numpy(q, k, v, mask, 0.25, return_probs=True)
    assert out.shape == (2, 3, tq, 16) and probs.shape == (2, 3, tq, t)
    close(out, ref_out)
    close(probs, ref_probs, atol=1e-6)


def test_attention_non_contiguous_inputs():
    x = randn(2, 9, 3, 8).transpose(0, 2, 1, 3)  # [B, T, H, D] viewed as [B, H, T, D], as split_heads gives
    out, _ = K.attention(x, x, x, None, 0.3)
    close(out, K.attention_numpy(x, x, x, None, 0.3)[0])


# ---- elementwise ---------------------------------------------------------------------------------------------

def test_exp_and_erf_twins_against_libm():
    x = np.linspace(-80, 80, 20001, dtype=np.float32)
    np.testing.assert_allclose(K.exp_numpy(x), np.exp(x.astype(np.float64)), rtol=3e-7)
    x = np.linspace(-6, 6, 20001, dtype=np.float32)
    erf = np.array([math.erf(float(t)) for t in x])
    assert np.abs(K.erf_numpy(x) - erf).max() < 5e-7


@pytest.mark.parametrize("shape", [(1, 1), (7,), (3, 5, 37), (17, 1025)])
def test_activations(shape):
    x = randn(*shape, scale=4.0)
    close(K.gelu(x), K.gelu_numpy(x), atol=2e-6)
    close(K.quick_gelu(x), K.quick_gelu_numpy(x), atol=2e-6)
    exact = x / (1 + np.exp(-1.702 * x.astype(np.float64)))
    close(K.quick_gelu(x), exact.astype(np.float32), atol=2e-6)


@pytest.mark.parametrize("act", [K.ACT_NONE, K.ACT_GELU, K.ACT_QUICK_GELU])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
def test_bias_act_residual_in_place(act, with_bias, with_residual):
    y, b = randn(4, 9, 21, scale=3.0), randn(21) if with_bias else None
    r = randn(4, 9, 21) if with_residual else None
    ref = K.bias_act_residual_numpy(y, b, act, r)
    out = K.bias_act_residual_(y, b, act, r)
    assert out is y
    close(y, ref, atol=2e-6)


@pytest.mark.parametrize("shape", [(1, 1), (3, 4, 37), (257, 1024)])
def test_layer_norm(shape):
    x, w, b = randn(*shape, scale=3.0) + 5.0, randn(shape[-1]), randn(shape[-1])
    w.flags.writeable = b.flags.writeable = False
    close(K.layer_norm(x, w, b, 1e-5), K.layer_norm_numpy(x, w, b, 1e-5), atol=3e-5)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3, 5), (4, 257)])
def test_softmax(shape):
    x = randn(*shape, scale=10.0)
    x[..., -1] = F32_MIN  # a masked entry
    out = K.softmax(x)
    close(out, K.softmax_numpy(x), atol=1e-6)
    ref = np.exp(x - x.max(-1, keepdims=True))
    close(out, ref / ref.sum(-1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("b,h,t,s", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 16, 17, 17)])
def test_scaled_masked_softmax_in_place(b, h, t, s):
    """Attention's softmax(scores * scale + mask), the mask broadcast over heads and query rows."""
    scores = randn(b, h, t, s, scale=4.0)
    mask = np.zeros((b, 1, 1, s), np.float32)
    mask[0, ..., 1:] = F32_MIN  # the first row attends to one key only
    ref = K.softmax_numpy(scores, 0.125, mask)
    out = K.softmax(scores, 0.125, mask, out=scores)
    assert out is not None and np.shares_memory(out, scores)
    close(out, ref, atol=1e-6)
    np.testing.assert_array_equal(out[0, ..., 0], 1.0)


# ---- compilation -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", ["auto", "numba"])
def test_a_joint_forward_runs_one_signature_per_kernel(tiny, backend_name):
    """Read-only memory-mapped weights, writable activations, strided and contiguous head views, with and
    without a mask or probabilities: every call runs the kernel's one declared signature (before: the GEMM had
    2 and attention 4 after one forward)."""
    directory, _ = tiny["base"]
    model = altclip_np.AltCLIPModel.from_pretrained(directory)
    ids, mask = text_batch(TINY_CONFIGS["base"]["text_config"], seq=7)
    before = altclip_np.get_backend()
    altclip_np.set_backend(backend_name)
    try:
        vision = TINY_CONFIGS["base"]["vision_config"]
        model(input_ids=ids, attention_mask=mask, pixel_values=images(vision), output_attentions=True)
        model.encode_text(input_ids=ids, attention_mask=mask)  # last layer: one query row, C-contiguous
        model.encode_image(pixel_values=images(vision, batch=1))
    finally:
        altclip_np.set_backend(before)
    for name in ("_layer_norm_rows", "_matmul_panels", "_pack_panels", "_attention"):
        assert _jit.KERNELS[name].dispatcher.signatures == [_jit.KERNELS[name].sig], name
    assert all(len(k.dispatcher.signatures) <= 1 for k in _jit.KERNELS.values())


def test_the_cache_key_covers_every_kernel_source(monkeypatch):
    """An edit to any file of the package (e.g. _tile.py, inlined into matmul.py's kernel) misses the cache."""
    k = _jit.KERNELS["_layer_norm_rows"]
    K.layer_norm(randn(2, 3), randn(3), randn(3), 1e-5)  # compiled (or loaded) and so in the cache
    assert k.cached()
    tile = _tile.panel_tile  # a helper the kernels call, compiled here on its own
    a, wp, c = randn(ROWS, 3), randn(3, LANES), np.zeros((ROWS, LANES), np.float32)
    tile(a, 0, ROWS, wp, 0, 3, c, 0, LANES, False)
    close(c, a @ wp, atol=1e-5)
    sig, codegen = tile.signatures[0], tile.targetctx.codegen()
    assert tile._cache.has(sig, codegen)
    monkeypatch.setattr(_jit, "SOURCES", "an edited " + _jit.SOURCES)
    assert not k.cached()
    assert not tile._cache.has(sig, codegen)  # (Numba's own key, the file's stamp, would still match)
