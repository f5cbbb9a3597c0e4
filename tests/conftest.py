"""Shared fixtures: tiny random AltCLIP checkpoints written by transformers itself, and the reference runs.

transformers and torch are the reference here, never a dependency of altclip_np.
"""
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repository's top-level kernels/ folder (installed as altclip_np.kernels) shadows Hugging Face's `kernels`
# package, which transformers imports, wherever the repository root is on sys.path: `python -m pytest` puts the
# working directory there (plain `pytest` does not). transformers then fails to import ("cannot import name
# 'CUDAProperties' from 'kernels'"). altclip_np itself is imported from its install, so the root can go.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import altclip_np  # noqa: E402

# The auto backend's measurements (autotune.py) go to a directory of this run's, not the user's cache.
os.environ.setdefault("ALTCLIP_NP_CACHE_DIR", tempfile.mkdtemp(prefix="altclip-np-test-cache-"))

# Several shapes of tiny model: head counts, layer counts, patch/image sizes, activations, projection dims.
TINY_CONFIGS = {
    "base": dict(
        text_config=dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, project_dim=24, max_position_embeddings=40),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                           image_size=30, patch_size=6),
        projection_dim=16),
    "wide": dict(
        text_config=dict(vocab_size=90, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                         intermediate_size=64, project_dim=40, max_position_embeddings=24, type_vocab_size=2,
                         hidden_act="gelu_new", layer_norm_eps=1e-6),
        vision_config=dict(hidden_size=40, num_hidden_layers=3, num_attention_heads=5, intermediate_size=50,
                           image_size=28, patch_size=7, hidden_act="gelu"),
        projection_dim=20, logit_scale_init_value=1.5),
    "deep": dict(
        text_config=dict(vocab_size=64, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=20, project_dim=16, max_position_embeddings=70, hidden_act="relu"),
        vision_config=dict(hidden_size=24, num_hidden_layers=4, num_attention_heads=3, intermediate_size=30,
                           image_size=32, patch_size=4, num_channels=3),
        projection_dim=12),
}


@pytest.fixture(params=altclip_np.backend.BACKENDS)
def backend(request):
    """Run a test under each backend (plain NumPy and the Numba kernels)."""
    before = altclip_np.get_backend()
    altclip_np.set_backend(request.param)
    yield request.param
    altclip_np.set_backend(before)


def make_tiny_checkpoint(directory, name="base", seed=0, dtype=None, **save_kwargs):
    """Write a random transformers AltCLIPModel checkpoint; return the (float32, eager) reference model."""
    import torch
    import transformers
    torch.manual_seed(seed)
    config = transformers.AltCLIPConfig(**TINY_CONFIGS[name])
    config._attn_implementation = "eager"  # attention probabilities are compared too
    model = transformers.AltCLIPModel(config).eval()
    with torch.no_grad():  # make the LayerNorm affine parameters non-trivial so they are really tested
        for n, p in model.named_parameters():
            if "LayerNorm" in n or "layer_norm" in n or "layrnorm" in n or "pre_LN" in n:
                p.add_(0.1 * torch.randn_like(p))
    saved = model if dtype is None else model.to(dtype)
    saved.save_pretrained(directory, **save_kwargs)
    return transformers.AltCLIPModel.from_pretrained(directory, attn_implementation="eager",
                                                     dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{name: (checkpoint dir, transformers reference model)} for every TINY_CONFIGS entry."""
    out = {}
    for name in TINY_CONFIGS:
        directory = tmp_path_factory.mktemp(f"tiny-{name}")
        out[name] = (directory, make_tiny_checkpoint(directory, name))
    return out


def text_batch(cfg, batch=3, seq=9, seed=0, pad_rows=(1,)):
    """Random ids framed like XLM-R (<s> ... </s>, then <pad>), some rows padded, and the matching mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg["vocab_size"], (batch, seq))
    ids[:, 0] = 0
    ids[:, -1] = 2
    for row in pad_rows:
        cut = seq // 2 + row % 3
        ids[row, cut - 1] = 2
        ids[row, cut:] = 1
    return ids, (ids != 1).astype(np.int64)


def images(cfg, batch=2, height=None, width=None, seed=0):
    rng = np.random.default_rng(seed)
    size = cfg["image_size"]
    return rng.standard_normal((batch, 3, height or size, width or size)).astype(np.float32)


def torch_run(fn, **arrays):
    """Call a transformers model with the NumPy arrays as tensors, without gradients."""
    import torch
    with torch.no_grad():
        return fn(**{k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
                     for k, v in arrays.items()})


def max_diff(ours, ref):
    """Max abs difference between our output and transformers', recursing into tuples and outputs."""
    import torch
    if isinstance(ref, torch.Tensor):
        assert np.shape(ours) == tuple(ref.shape), f"shape {np.shape(ours)} != {tuple(ref.shape)}"
        return float(np.abs(np.asarray(ours, dtype=np.float64) - ref.double().numpy()).max())
    if isinstance(ref, dict):
        assert list(ours.keys()) == list(ref.keys()), f"fields {list(ours.keys())} != {list(ref.keys())}"
        return max(max_diff(ours[k], ref[k]) for k in ref.keys())
    assert isinstance(ref, (tuple, list)) and len(ours) == len(ref), f"{type(ours)} vs {type(ref)}"
    return max((max_diff(a, b) for a, b in zip(ours, ref)), default=0.0)


# ---- the installed command on a tiny checkpoint (tests/test_cli.py, tests/test_index.py) ---------------------

def run(*args, env=None, expect=0, timeout=120):
    """Run the `altclip-np` command installed with this Python (not another one on PATH); assert its exit status."""
    script = Path(sys.executable).parent / "altclip-np"  # (a --user install puts it elsewhere: run the module)
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "altclip_np"]
    result = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A tiny random checkpoint with every processor file (tools/make_tiny_checkpoint.py)."""
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", ROOT / "tools/make_tiny_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.make_tiny_checkpoint(tmp_path_factory.mktemp("cli-tiny"))


@pytest.fixture(scope="session")
def ours(ckpt):
    return altclip_np.AltCLIPModel.from_pretrained(ckpt), altclip_np.AltCLIPProcessor.from_pretrained(ckpt)
