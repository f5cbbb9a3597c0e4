"""Numba kernels for altclip_np, each beside a plain-NumPy twin (`*_numpy`) that states its maths.

Each kernel is compiled for one signature when a forward first needs it (the model's five together, in
child processes, about 14 s of CPU once per machine) and cached on disk; later processes load the machine
code in milliseconds. `warmup()` pays that ahead of time (`altclip-np warmup`). See _jit.py. Importing them
changes nothing process-wide; the OpenMP spin that suits them (idle threads spin ~0.2 ms, then sleep, so
they do not starve OpenBLAS's threads) is set by `altclip_np.runtime.tune_process()`, when asked for.
"""
from .attention import attention, attention_numpy
from .elementwise import (ACT_GELU, ACT_NONE, ACT_QUICK_GELU, bias_act_residual_, bias_act_residual_numpy,
                          erf_numpy, exp_numpy, gelu, gelu_numpy, layer_norm, layer_norm_numpy,
                          quick_gelu, quick_gelu_numpy, softmax, softmax_numpy)
from .matmul import matmul_nt, matmul_nt_numpy, matmul_panels, pack_panels, pack_panels_numpy
from ._jit import warmup

__all__ = [
    "attention", "attention_numpy", "matmul_nt", "matmul_nt_numpy", "matmul_panels", "pack_panels",
    "pack_panels_numpy", "layer_norm", "layer_norm_numpy",
    "gelu", "gelu_numpy", "quick_gelu", "quick_gelu_numpy", "softmax", "softmax_numpy", "bias_act_residual_",
    "bias_act_residual_numpy", "exp_numpy", "erf_numpy",
    "ACT_NONE", "ACT_GELU", "ACT_QUICK_GELU", "warmup",
]
