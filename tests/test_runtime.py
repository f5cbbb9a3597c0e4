"""altclip_np changes nothing process-wide unless `runtime.tune_process()` is called; that call applies each tuning.

Each check runs in a fresh subprocess (the tunings are about process start-up) and reads what the process can
see: os.environ, gc.get_freeze_count(), and malloc's behaviour (how much freed memory stays resident).
"""
import json
import os
import subprocess
import sys

import pytest

# Prints what a forward left behind. Malloc: 16 blocks of 16 MiB are malloc'd, filled and freed, and `kept` is the
# share of their 256 MiB still resident after the frees. glibc by default either maps blocks this big on their own
# (unmapped on free) or, once its dynamic mmap threshold has risen, trims the heap top beyond twice that threshold
# (at most 64 MiB): observed kept 0.00. Tuned by mallopt (blocks up to 32 MiB from the heap, trimmed only beyond
# 1 GiB) the memory stays for reuse: observed kept 1.00. (Page-fault counts of reused blocks depended on what the
# process had freed before, through that dynamic threshold.)
PROBE = r"""
import ctypes, gc, json, os, sys
env_before = dict(os.environ)
import altclip_np
tuned = altclip_np.runtime.tune_process() if sys.argv[2] == "tune" else None
import numpy as np

def share_kept_after_free(n=16, size=16 << 20):
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    rss = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])  # KiB
    before = rss()
    blocks = [libc.malloc(size) for _ in range(n)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    peak = rss()
    for b in reversed(blocks):
        libc.free(b)
    return (rss() - before) / (peak - before)

model = altclip_np.AltCLIPModel.from_pretrained(sys.argv[1])
rng = np.random.default_rng(0)
ids = np.array([[0, 5, 6, 7, 2]])
pixels = rng.standard_normal((1, 3, 30, 30)).astype(np.float32)
model(input_ids=ids, pixel_values=pixels)
model.encode_text(ids)
kept = share_kept_after_free() if sys.platform.startswith("linux") else None

class Node:
    pass
node = Node(); node.self = node
import weakref; ref = weakref.ref(node); del node; gc.collect()
changed = {k: v for k, v in os.environ.items() if env_before.get(k) != v}
removed = sorted(set(env_before) - set(os.environ))
print(json.dumps({"tuned": tuned, "changed": changed, "removed": removed, "freeze_count": gc.get_freeze_count(),
                  "kept": kept, "cycle_collected": ref() is None}))
"""


def probe(checkpoint, mode, **env):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "ALTCLIP_NP_BACKEND")}
    result = subprocess.run([sys.executable, "-c", PROBE, str(checkpoint), mode], capture_output=True, text=True,
                            timeout=300, env={**environment, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_a_forward_changes_nothing_process_wide(tiny, backend):
    out = probe(tiny["base"][0], "plain", ALTCLIP_NP_BACKEND=backend)
    assert out["changed"] == {} and out["removed"] == []  # os.environ as it was (Numba's too)
    assert out["freeze_count"] == 0  # no gc.freeze
    if sys.platform.startswith("linux"):
        assert out["kept"] < 0.5  # malloc untouched: freed big blocks go back to the OS


def test_tune_process_applies_each_tuning(tiny):
    out = probe(tiny["base"][0], "tune")
    assert out["tuned"] == {"openblas_thread_timeout": "applied", "omp_wait_policy": "applied",
                            "malloc": "applied" if sys.platform.startswith("linux") else out["tuned"]["malloc"],
                            "gc_freeze": "applied (at the end of the next forward)"}
    assert out["changed"] == {"OPENBLAS_THREAD_TIMEOUT": "4", "GOMP_SPINCOUNT": "10000"}
    assert out["freeze_count"] > 1000  # the first forward froze Numba's and NumPy's start-up objects
    assert out["cycle_collected"]  # a cycle made after the freeze is still collected
    if sys.platform.startswith("linux"):
        assert out["kept"] > 0.9  # freed memory kept in the heap for reuse


@pytest.mark.parametrize("omp", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}])
def test_tune_process_keeps_what_the_user_set(tiny, omp):
    out = probe(tiny["base"][0], "tune", OPENBLAS_THREAD_TIMEOUT="1", **omp)
    assert out["tuned"]["openblas_thread_timeout"] == out["tuned"]["omp_wait_policy"] == "already set"
    assert out["changed"] == {}


def test_tune_process_says_when_it_is_too_late():
    code = ("import numpy, altclip_np, json; "
            "print(json.dumps(altclip_np.runtime.tune_process(malloc=False, gc_freeze=False)))")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                    timeout=60, check=True).stdout)
    assert out["openblas_thread_timeout"] == "too late: NumPy (and OpenBLAS) already loaded"
    assert out["malloc"] == out["gc_freeze"] == "skipped"


def test_a_bad_backend_is_reported_at_first_use_with_the_allowed_values():
    code = ("import altclip_np\n"  # importing is fine
            "from altclip_np import backend\n"
            "try:\n    backend.get_backend()\nexcept ValueError as e:\n    print(e)\n")
    env = {**os.environ, "ALTCLIP_NP_BACKEND": "cuda"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ALTCLIP_NP_BACKEND must be one of numpy, numba, auto; got 'cuda'"
