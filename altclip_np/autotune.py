"""What the `auto` backend runs, chosen by measuring on this machine, once, and cached.

Which of two GEMMs is faster at a shape depends on the CPU (AVX-512 or AVX2, its clock and caches) and the
thread count, not on anything one machine can measure for another: on a 2-core AVX-512 EPYC the Numba GEMM
on packed weights is even with or ahead of OpenBLAS at the model's shapes; compiled for AVX2 there, it trails
OpenBLAS's Haswell kernels from 257 rows. So `altclip-np tune` (or `ensure()`) times, interleaved, medians:
  - for each class of GEMM rows the model runs (M = 128: eight 16-token texts; 257: one image; 616: eight
    77-token texts; 2056: eight images), a whole encoder layer as the model runs it (`layer_forward`, on
    random weights of the real sizes: LayerNorm, q, k, v, attention, out + x, LayerNorm, fc1, fc2 + x), once
    with every GEMM on the Numba GEMM (the weights packed once, as the model keeps them; bias, activation and
    residual in its epilogue), once on NumPy's BLAS (those in a Numba pass after it). The GEMMs alone (then
    on misaligned panels too) did not tell: timed back to back on a Xeon, OpenBLAS won at 257 rows (27.1
    against 28.5 ms a layer), while the image forward ran in 0.87x the time on the Numba GEMM;
  - for each class of sequence length (16 and 77 tokens: eight texts; 257: one image; 16 heads of 64), the fused
    Numba attention against scores on BLAS + the Numba softmax + p v on BLAS (what runs otherwise);
and keeps the faster of each. A few seconds (so never before a one-off command's first result): `altclip-np
tune` runs it, a program calls `ensure()`. Nothing measures on its own, since the choice of kernel changes the
last bits of a result, and two runs of one job should agree. Until then
`auto` follows `prior()`, what was measured on the two kinds of machine so far. The result is written to
`$ALTCLIP_NP_CACHE_DIR` (default `$XDG_CACHE_HOME/altclip-np` or `~/.cache/altclip-np`) as JSON, keyed by CPU
model, ISA flags, Numba's target CPU, thread counts and the versions of altclip_np and NumPy; a file whose key
does not match is ignored, and an unreadable one is measured again and replaced.
"""
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

GEMM_JOBS = ((8, 16), (1, 257), (8, 77), (8, 257))  # (batch, tokens): the model's GEMM rows, one job per class
GEMM_ROWS = tuple(b * t for b, t in GEMM_JOBS)  # 128: eight 16-token texts; 257: one image; 616, 2056
ATTENTION_JOBS = ((8, 16), (8, 77), (1, 257))  # (batch, tokens), 16 heads of 64: one per class of tokens
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512vnni", "avx512bf16", "amx-tile")
FILE_FORMAT = 4  # 2: attention chosen per class of tokens; 3: the GEMM on packed weights; 4: in a whole layer
log = logging.getLogger("altclip_np")
_choices = None  # this process's, once loaded or measured


def cache_dir():
    if os.environ.get("ALTCLIP_NP_CACHE_DIR"):
        return Path(os.environ["ALTCLIP_NP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "altclip-np"


def cache_key():
    """What the measurement depends on: a cached result is used only where all of it matches."""
    import llvmlite.binding as llvm
    import numba

    from . import __version__
    from .kernels._tile import target_has_avx512
    features = llvm.get_host_cpu_features()
    target = numba.config.CPU_NAME or llvm.get_host_cpu_name()  # NUMBA_CPU_NAME compiles for another CPU
    return {"cpu": _cpu_model(), "isa": [f for f in ISA_FLAGS if features.get(f)], "numba_cpu": target,
            "numba_avx512": target_has_avx512(), "numba_features": numba.config.CPU_FEATURES,
            "numba_threads": numba.get_num_threads(),
            "blas_threads": blas_threads(),
            "altclip_np": __version__, "numpy": np.__version__}


def blas_threads():  # OpenBLAS's thread count as it reads it: the variables, else every CPU this process may use
    """The same count spelled two ways is one key: a calibration made with OPENBLAS_NUM_THREADS unset holds for
    a program that sets it to the CPU count (as tools/bench.py does)."""
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return str(int(value))
    return str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def cache_file(key):
    name = "".join(c if c.isalnum() else "-" for c in f"{key['numba_cpu']}-{key['numba_threads']}t")
    return cache_dir() / f"autotune-{name}.json"


def choices():
    """{"gemm_numba": {rows: bool}, "attention_numba": {tokens: bool}, ...}: this machine's, if cached, else
    `prior()`."""
    global _choices
    if _choices is None:
        key = cache_key()
        _choices = load(cache_file(key), key) or prior(key)
    return _choices


def ensure():
    """This machine's choices: cached, else measured now (a few seconds) and cached."""
    global _choices
    key = cache_key()
    _choices = load(cache_file(key), key)
    if _choices is None:
        log.info("measuring which kernels are faster on this machine (once, a few seconds)...")
        _choices = save(cache_file(key), key, measure())
    return _choices


def prior(key):
    """Before measuring, from a 2-core EPYC Zen 4 (AVX-512, and the AVX2 build for Haswell). The Numba GEMM on
    packed weights: on AVX-512 170-192 GFLOP/s against OpenBLAS's 132-191 at every model shape; compiled for
    AVX2, 118-141 against 116-157 for OpenBLAS's Haswell kernels, so there up to 1024 rows only (it carries
    the bias/activation/residual epilogue, OpenBLAS needs a pass after it). The fused attention ahead at 77
    and 257 tokens (4.1 against 4.9 ms, 4.8 against 15.2), the BLAS path at 16 (0.19 against 0.29 ms for eight
    texts)."""
    return {"gemm_numba": {str(m): key.get("numba_avx512") or m <= 1024 for m in GEMM_ROWS},
            "attention_numba": {str(t): t > 16 for _, t in ATTENTION_JOBS}, "source": "prior"}


def _nearest(classes, size):  # the choice of the class nearest to `size` on a log scale
    return classes[min(classes, key=lambda c: abs(np.log(max(size, 1) / int(c))))]


def gemm_on_numba(rows):
    """The choice for a GEMM of `rows` rows: that of the measured class nearest to it."""
    return _nearest(choices()["gemm_numba"], rows)


def attention_on_numba(tokens=None):
    """The choice for attention over `tokens` keys (None: a 77-token text): that of the nearest class."""
    return _nearest(choices()["attention_numba"], 77 if tokens is None else tokens)


def load(path, key):
    """The cached choices, or None when there is no file, it is unreadable, or its key is another machine's."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("format") == FILE_FORMAT and data.get("key") == key:
            gemm = {str(int(m)): bool(v) for m, v in data["gemm_numba"].items()}
            attention = {str(int(t)): bool(v) for t, v in data["attention_numba"].items()}
            if gemm and attention:
                return {**data, "gemm_numba": gemm, "attention_numba": attention}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def save(path, key, measured):
    """Write the choices atomically (a unique temporary file, then os.replace); an unwritable cache is no
    error: the choices still hold for this process."""
    data = {"format": FILE_FORMAT, "key": key, **measured}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass
    return data


def measure(gemm_jobs=GEMM_JOBS, dims=(1024, 4096, 16), attention_jobs=ATTENTION_JOBS, reps=3):
    """Time both sides of each choice (interleaved, `reps` rounds after a warm-up; medians in seconds).
    dims: (hidden size, MLP size, heads) of the layer the GEMM choice is timed in."""
    from . import kernels as K

    rng = np.random.default_rng(0)
    layer = random_layer(rng, *dims)
    gemm_times, gemm_numba = {}, {}
    for batch, tokens in gemm_jobs:
        x = rng.standard_normal((batch, tokens, dims[0]), dtype=np.float32)
        t = _median_interleaved({"numba": lambda: layer_forward(K, x, layer, on_numba=True),
                                 "blas": lambda: layer_forward(K, x, layer, on_numba=False)}, reps)
        gemm_times[str(batch * tokens)] = t
        gemm_numba[str(batch * tokens)] = t["numba"] <= t["blas"]
    attention_times, attention_numba = {}, {}
    for batch, tokens in attention_jobs:
        # [B, H, T, D] views of [B, T, H, D] memory, as the model's split heads are: contiguous [B, H, T, D] made
        # the fused side copy all three into its layout and gave BLAS contiguous heads the model never has
        q, k, v = (rng.standard_normal((batch, tokens, 16, 64), dtype=np.float32).transpose(0, 2, 1, 3)
                   for _ in range(3))
        mask = np.zeros((batch, 1, 1, tokens), np.float32)
        sides = {"numba": lambda: K.attention(q, k, v, mask, 0.125),
                 "blas": lambda: K.softmax(q @ k.transpose(0, 1, 3, 2), 0.125, mask) @ v}
        attention_times[f"{batch}x{tokens}"] = t = _median_interleaved(sides, reps)
        attention_numba[str(tokens)] = t["numba"] <= t["blas"]
    return {"gemm_numba": gemm_numba, "attention_numba": attention_numba,
            "seconds": {"gemm": gemm_times, "attention": attention_times}, "source": "measured",
            "measured_at": time.time()}


def random_layer(rng, d, f, heads):  # -> an encoder layer's random weights of the given sizes, and their panels
    from . import kernels as K

    def lin(n_out, n_in):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(n_in ** -0.5)
        return SimpleNamespace(weight=w, bias=rng.standard_normal(n_out, dtype=np.float32),
                               panels=K.pack_panels(w))  # packed once, as the model keeps them

    return SimpleNamespace(heads=heads, q=lin(d, d), k=lin(d, d), v=lin(d, d), out=lin(d, d), fc1=lin(f, d),
                           fc2=lin(d, f), ln_weight=np.ones(d, np.float32), ln_bias=np.zeros(d, np.float32))


def layer_forward(K, x, layer, on_numba):  # [B, T, D] -> [B * T, D]: a pre-LN encoder layer on the kernels
    """What fast.Fast.vision_layer runs, with every GEMM on the Numba GEMM (bias, activation and residual in
    its epilogue) or on NumPy's BLAS (those in a Numba pass after it). (Written out here, not called: this
    module is below the model's maths in the package's layers.)"""
    b, t, d = x.shape
    x = x.reshape(b * t, d)

    def linear(h, p, act=K.ACT_NONE, residual=None):
        if on_numba:
            return K.matmul_panels(h, p.panels, p.weight.shape[0], bias=p.bias, act=act, residual=residual)
        return K.bias_act_residual_(h @ p.weight.T, p.bias, act, residual)

    h = K.layer_norm(x, layer.ln_weight, layer.ln_bias, 1e-5)
    q, k, v = (linear(h, p).reshape(b, t, layer.heads, -1).transpose(0, 2, 1, 3) for p in (layer.q, layer.k, layer.v))
    a, _ = K.attention(q, k, v, None, (d // layer.heads) ** -0.5)  # [B, H, T, D] view of [B, T, H, D] memory
    x = linear(a.transpose(0, 2, 1, 3).reshape(b * t, d), layer.out, residual=x)
    h = linear(K.layer_norm(x, layer.ln_weight, layer.ln_bias, 1e-5), layer.fc1, act=K.ACT_QUICK_GELU)
    return linear(h, layer.fc2, residual=x)


def _median_interleaved(sides, reps):
    for f in sides.values():  # warm-up: compiles or loads the kernels, touches the operands
        f()
    times = {name: [] for name in sides}
    for _ in range(reps):
        for name, f in sides.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reset():
    """Forget this process's choices (the next `auto` op loads or measures them again)."""
    global _choices
    _choices = None
