"""autotune: the auto backend's choices, measured on this machine and cached per CPU, threads and version.

The cache logic is checked with a stand-in measurement (counted); one real measurement runs on small shapes.
Nothing here asserts a time.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from altclip_np import autotune, backend, fast

FAKE = {"gemm_numba": {"128": True, "257": False, "616": False, "2056": True},
        "attention_numba": {"16": False, "77": False, "257": True},
        "seconds": {}, "source": "measured"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory, and a stand-in `measure` that counts its calls."""
    monkeypatch.setenv("ALTCLIP_NP_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(autotune, "measure", lambda: calls.append(1) or dict(FAKE))
    autotune.reset()
    yield calls
    autotune.reset()


def test_ensure_measures_once_then_reads_the_cache(cache):
    first = autotune.ensure()
    path = autotune.cache_file(autotune.cache_key())
    written = json.loads(path.read_text())
    assert written["key"] == autotune.cache_key() and written["gemm_numba"] == FAKE["gemm_numba"]
    autotune.reset()
    assert autotune.ensure()["gemm_numba"] == first["gemm_numba"] == FAKE["gemm_numba"]
    assert autotune.choices()["attention_numba"] == FAKE["attention_numba"]
    assert len(cache) == 1  # the second process-equivalent read the file


def test_choices_without_a_cache_are_the_prior_and_measure_nothing(cache):
    key = autotune.cache_key()
    assert autotune.choices() == autotune.prior(key)
    assert cache == [] and not autotune.cache_file(key).exists()
    # the prior's stated figures: the Numba GEMM at every row class on AVX-512, up to 1024 rows on AVX2
    assert autotune.prior({**key, "numba_avx512": True})["gemm_numba"] == {"128": True, "257": True, "616": True,
                                                                          "2056": True}
    assert autotune.prior({**key, "numba_avx512": False})["gemm_numba"] == {"128": True, "257": True, "616": True,
                                                                           "2056": False}


def test_a_cache_with_another_key_is_ignored_and_replaced(cache):
    key = autotune.cache_key()
    path = autotune.cache_file(key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": autotune.FILE_FORMAT, "key": {**key, "numba_threads": 99},
                                "gemm_numba": {"128": False}, "attention_numba": {"77": True}}))
    assert autotune.choices()["source"] == "prior"
    assert autotune.ensure()["gemm_numba"] == FAKE["gemm_numba"] and len(cache) == 1
    assert json.loads(path.read_text())["key"] == key


def test_the_blas_thread_count_is_keyed_by_its_value_not_its_spelling(monkeypatch):
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    cpus = len(os.sched_getaffinity(0))
    unset = autotune.cache_key()
    assert unset["blas_threads"] == str(cpus)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", str(cpus))  # what tools/bench.py sets: the same calibration
    assert autotune.cache_key() == unset
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", str(cpus + 1))  # another count: another key
    assert autotune.cache_key()["blas_threads"] == str(cpus + 1)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "")  # empty is unset, as OpenBLAS reads it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert autotune.cache_key()["blas_threads"] == "1"


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": 1}', "", "\x00" * 10])
def test_a_corrupt_cache_is_measured_again_and_replaced(cache, content):
    path = autotune.cache_file(autotune.cache_key())
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert autotune.ensure()["gemm_numba"] == FAKE["gemm_numba"] and len(cache) == 1
    assert json.loads(path.read_text())["gemm_numba"] == FAKE["gemm_numba"]


def test_an_unwritable_cache_still_gives_choices(cache, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ALTCLIP_NP_CACHE_DIR", str(tmp_path / "file" / "cache"))  # a path under a file
    assert autotune.ensure()["gemm_numba"] == FAKE["gemm_numba"]


def test_the_auto_backend_follows_the_choices(cache, monkeypatch):
    autotune.ensure()
    monkeypatch.setattr(backend, "_backend", "auto")
    # each row count takes the choice of the nearest measured class on a log scale (boundaries: the geometric
    # means 181, 398, 1125)
    ops = fast.ops()
    assert [ops.gemm_on_numba(m) for m in (1, 100, 190, 300, 616, 1000, 1200, 5000)] == \
        [True, True, False, False, False, False, True, True]
    # attention likewise by tokens (classes 16, 77, 257: boundaries 35 and 141); None is a 77-token text
    assert [ops.attention_on_numba(t) for t in (1, 34, 36, 140, 142, 600)] == \
        [False, False, False, False, True, True]
    assert autotune.attention_on_numba(None) is False
    monkeypatch.setattr(backend, "_backend", "numba")
    ops = fast.ops()
    assert ops.gemm_on_numba(300) and ops.attention_on_numba(77)
    monkeypatch.setattr(backend, "_backend", "numpy")
    assert fast.ops() is fast.REFERENCE


def test_measure_times_both_sides_and_keeps_the_faster():
    out = autotune.measure(gemm_jobs=((2, 4), (1, 9)), dims=(32, 48, 2), attention_jobs=((1, 9), (2, 5)),
                           reps=1)
    for m, t in out["seconds"]["gemm"].items():
        assert t["numba"] > 0 and t["blas"] > 0
        assert out["gemm_numba"][m] == (t["numba"] <= t["blas"])
    assert set(out["seconds"]["attention"]) == {"1x9", "2x5"}
    for job, t in out["seconds"]["attention"].items():
        assert out["attention_numba"][job.split("x")[1]] == (t["numba"] <= t["blas"])


def test_the_tune_command_measures_and_saves(tmp_path):
    command = Path(sys.executable).parent / "altclip-np"
    env = {**os.environ, "ALTCLIP_NP_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([str(command), "tune", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert sorted(out["gemm_numba"], key=int) == [str(m) for m in autotune.GEMM_ROWS]
    for m, t in out["seconds"]["gemm"].items():
        assert out["gemm_numba"][m] == (t["numba"] <= t["blas"])
    saved = json.loads(Path(out["cache_file"]).read_text())
    assert Path(out["cache_file"]).parent == tmp_path and saved["gemm_numba"] == out["gemm_numba"]


@pytest.mark.parametrize("on_numba", [True, False])
def test_the_timed_layer_is_the_models_layer(on_numba):
    # The calibration times autotune.layer_forward: it must compute vision.encoder_layer (the reference), or the
    # choice is made on other work. Observed max abs difference 1.4e-6 (Numba GEMM), 9.5e-7 (BLAS); outputs up to 7.
    from types import SimpleNamespace

    from altclip_np import kernels as K
    from altclip_np.layers import Params
    from altclip_np.vision import encoder_layer
    rng = np.random.default_rng(1)
    layer = autotune.random_layer(rng, 32, 48, 2)
    weights = {"layer_norm1.weight": layer.ln_weight, "layer_norm1.bias": layer.ln_bias,
               "layer_norm2.weight": layer.ln_weight, "layer_norm2.bias": layer.ln_bias}
    for name, p in {"self_attn.q_proj": layer.q, "self_attn.k_proj": layer.k, "self_attn.v_proj": layer.v,
                    "self_attn.out_proj": layer.out, "mlp.fc1": layer.fc1, "mlp.fc2": layer.fc2}.items():
        weights[f"{name}.weight"], weights[f"{name}.bias"] = p.weight, p.bias
    cfg = SimpleNamespace(layer_norm_eps=1e-5, num_attention_heads=2, hidden_act="quick_gelu")
    x = rng.standard_normal((3, 7, 32), dtype=np.float32)
    want, _ = encoder_layer(x, Params(weights), cfg)
    got = autotune.layer_forward(K, x, layer, on_numba=on_numba)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=2e-5)
