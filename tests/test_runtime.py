"""altclip_np changes nothing process-wide unless `runtime.tune_process()` is called; that call applies each tuning.

Each check runs in a fresh subprocess (the tunings are about process start-up) and reads what the process can
see: os.environ, gc.get_freeze_count(), and malloc's behaviour through page-fault counts.
"""
import json
import os
import subprocess
import sys

import pytest

# Prints what a forward left behind. Malloc: a 4 MiB block is 1,024 pages. glibc by default serves it with a fresh
# mmap, so the 2nd allocation faults again (~500 faults observed; only from the 3rd on does glibc's dynamic mmap
# threshold reuse the heap). Tuned by mallopt, the 2nd reuses the heap block (0 faults observed).
PROBE = r"""
import gc, json, os, resource, sys
env_before = dict(os.environ)
import altclip_np
tuned = altclip_np.runtime.tune_process() if sys.argv[2] == "tune" else None
import numpy as np

def faults_to_fill(nbytes):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(nbytes, np.uint8)
    a.fill(1)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

model = altclip_np.AltCLIPModel.from_pretrained(sys.argv[1])
rng = np.random.default_rng(0)
ids = np.array([[0, 5, 6, 7, 2]])
pixels = rng.standard_normal((1, 3, 30, 30)).astype(np.float32)
model(input_ids=ids, pixel_values=pixels)
model.encode_text(ids)
faults = [faults_to_fill(4 << 20) for _ in range(2)]

class Node:
    pass
node = Node(); node.self = node
import weakref; ref = weakref.ref(node); del node; gc.collect()
changed = {k: v for k, v in os.environ.items() if env_before.get(k) != v}
removed = sorted(set(env_before) - set(os.environ))
print(json.dumps({"tuned": tuned, "changed": changed, "removed": removed, "freeze_count": gc.get_freeze_count(),
                  "second_fault": faults[1], "cycle_collected": ref() is None}))
"""


def probe(checkpoint, mode, **env):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "ALTCLIP_NP_BACKEND")}
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
        assert out["second_fault"] >= 256  # malloc untouched: the 2nd 4 MiB block is a fresh mmap again


def test_tune_process_applies_each_tuning(tiny):
    out = probe(tiny["base"][0], "tune")
    assert out["tuned"] == {"openblas_thread_timeout": "applied", "omp_wait_policy": "applied",
                            "malloc": "applied" if sys.platform.startswith("linux") else out["tuned"]["malloc"],
                            "gc_freeze": "applied (at the end of the next forward)"}
    assert out["changed"] == {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}
    assert out["freeze_count"] > 1000  # the first forward froze Numba's and NumPy's start-up objects
    assert out["cycle_collected"]  # a cycle made after the freeze is still collected
    if sys.platform.startswith("linux"):
        assert out["second_fault"] < 64  # freed memory reused from the heap


def test_tune_process_keeps_what_the_user_set(tiny):
    out = probe(tiny["base"][0], "tune", OPENBLAS_THREAD_TIMEOUT="1", OMP_WAIT_POLICY="ACTIVE")
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
            "try:\n    backend.uses('attention')\nexcept ValueError as e:\n    print(e)\n")
    env = {**os.environ, "ALTCLIP_NP_BACKEND": "cuda"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ALTCLIP_NP_BACKEND must be one of numpy, numba, auto; got 'cuda'"
