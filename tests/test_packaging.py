"""The distribution as a user gets it: sdist and wheel built from the repository's files, the wheel installed
(not editable) into a fresh virtual environment beside Hugging Face's PyPI package `kernels`, then used from
another directory with site-packages read-only.

Needs the package registry (PyPI) for the fresh environment's dependencies, as `pip install altclip-np` would.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def sh(*args, cwd=None, env=None, timeout=900):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """{"sdist": path, "wheel": path}, built by `python -m build` (sdist, then the wheel from the sdist) from a
    copy of the files git tracks, so nothing untracked or generated leaks into the distribution."""
    src = tmp_path_factory.mktemp("src")
    files = sh("git", "ls-files", "-z", cwd=ROOT).split("\0")
    if not any(files):
        pytest.skip("not a git checkout")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src)
    return {"sdist": next(out.glob("*.tar.gz")), "wheel": next(out.glob("*.whl"))}


def test_wheel_holds_the_package_kernels_and_command_but_no_tests(dist):
    names = zipfile.ZipFile(dist["wheel"]).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"altclip_np", "altclip_np-0.1.0.dist-info"}, tops  # no top-level `kernels`, no tests
    for module in ("matmul", "attention", "elementwise", "_tile", "__init__"):
        assert f"altclip_np/kernels/{module}.py" in names
    entry_points = zipfile.ZipFile(dist["wheel"]).read("altclip_np-0.1.0.dist-info/entry_points.txt").decode()
    assert "altclip-np = altclip_np.__main__:main" in entry_points
    metadata = zipfile.ZipFile(dist["wheel"]).read("altclip_np-0.1.0.dist-info/METADATA").decode()
    requires = sorted(re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", l.split(":", 1)[1].strip())[0].lower())
                      for l in metadata.splitlines() if l.startswith("Requires-Dist:") and "extra ==" not in l)
    assert requires == ["huggingface-hub", "numba", "numpy", "pillow", "sentencepiece", "tqdm"]  # PEP 503 names


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    """A new virtual environment (no system packages) with the wheel and PyPI's `kernels` installed."""
    path = tmp_path_factory.mktemp("venv")
    sh(sys.executable, "-m", "venv", path)
    python = path / "bin" / "python"
    sh(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", dist["wheel"], "kernels")
    return path


def test_installs_beside_huggingface_kernels_and_pip_check_is_clean(venv, tmp_path):
    python = venv / "bin" / "python"
    sh(python, "-m", "pip", "check", "--disable-pip-version-check")
    code = ("import json, kernels, altclip_np.kernels as ours, numpy as np\n"
            "a = np.arange(12, dtype=np.float32).reshape(3, 4); w = np.ones((2, 4), np.float32)\n"
            "print(json.dumps({'hf': kernels.__file__, 'hf_has_get_kernel': hasattr(kernels, 'get_kernel'),\n"
            "                  'ours': ours.__file__, 'matmul': ours.matmul_nt(a, w).tolist()}))")
    out = json.loads(sh(python, "-c", code, cwd=tmp_path, env={"NUMBA_CACHE_DIR": str(tmp_path / "nb")}))
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert out["hf"] == str(site / "kernels" / "__init__.py") and out["hf_has_get_kernel"]  # HF's, untouched
    assert out["ours"] == str(site / "altclip_np" / "kernels" / "__init__.py")
    assert out["matmul"] == [[6.0, 6.0], [22.0, 22.0], [38.0, 38.0]]  # rows of a summed: exact in float32


def read_only(site):  # a command prefix that runs with site-packages mounted read-only (a private mount namespace)
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{site}" "{site}" && exec "$@"', "sh"]


def test_cli_classifies_from_another_directory_with_read_only_site_packages(venv, tmp_path):
    from PIL import Image

    from altclip_np import AltCLIPModel, AltCLIPProcessor

    site = next((venv / "lib").glob("python3.*/site-packages"))
    probe = subprocess.run([*read_only(site), "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot mount site-packages read-only here (needs root): {probe.stderr.strip()}")
    tiny = tmp_path / "tiny"
    sh(sys.executable, ROOT / "tools" / "make_tiny_checkpoint.py", tiny)
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    home = tmp_path / "home"  # Numba falls back to a user-wide cache under $HOME/.cache/numba
    env = {**{k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}, "HOME": str(home), "HF_HUB_OFFLINE": "1"}
    command = [*read_only(site), venv / "bin" / "altclip-np", "classify", image, "--labels", "猫", "dog",
               "--model", tiny, "--json"]
    runs, cached = [], []
    for _ in range(2):
        result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=tmp_path, env=env,
                                timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(json.loads(result.stdout))
        cached.append({p: p.stat().st_mtime_ns for p in (home / ".cache" / "numba").rglob("*.nb*")})
    assert not list(site.rglob("*.nb*")), "Numba wrote into the read-only site-packages"
    assert cached[0], "no Numba cache under $HOME/.cache/numba"
    assert cached[1] == cached[0]  # the second run loaded the kernels the first one cached
    assert [e["label"] for e in runs[1][0]["labels"]] == [e["label"] for e in runs[0][0]["labels"]]

    # The scores against the library run here on the same inputs (the same code, in this process).
    model, processor = AltCLIPModel.from_pretrained(tiny), AltCLIPProcessor.from_pretrained(tiny)
    enc = processor(text=["a photo of a 猫.", "a photo of a dog."], images=[str(image)], padding=True)
    logits = model(**enc).logits_per_image[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    scores = {entry["label"]: entry["score"] for entry in runs[0][0]["labels"]}
    assert abs(scores["猫"] - probs[0]) < 1e-6 and abs(scores["dog"] - probs[1]) < 1e-6  # observed: < 1e-7
