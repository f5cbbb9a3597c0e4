"""Every Python from requires-python up to 3.13 runs the run-time code (issue 14).

This Python records what transformers (and `regex`'s \\X) make of the tiny checkpoints, trained tokenizers,
texts and images (tests/compat_reference.py); tools/check_pythons.py installs altclip-np's wheel with only the
run-time dependencies into a venv per Python (cached in ~/.cache/altclip-np/pythons) and compares there: ids
and clusters exactly, pixels within 1e-6, model outputs within 1e-5. Observed on 3.10, 3.11, 3.12 and 3.13:
every id and cluster equal, pixel values bit-identical, model outputs within 1.9e-6 (numpy and numba backends).
A Python that is not installed is skipped, with the command that installs it, unless
ALTCLIP_NP_REQUIRE_PYTHONS=1 (CI sets it: there every Python must run). The venvs are cached in
~/.cache/altclip-np/pythons (or $ALTCLIP_NP_PYTHONS_CACHE); a cold cache costs a few minutes, mostly Numba
compiling the kernels once per Python.
"""
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("regex")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import compat_reference  # noqa: E402


def _load_tool():
    spec = importlib.util.spec_from_file_location("check_pythons", ROOT / "tools" / "check_pythons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_pythons = _load_tool()


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat-refs")
    compat_reference.record(root)
    return root


@pytest.fixture(scope="module")
def results(refs):
    """{version: (status, seconds, output)} for 3.10, 3.12 and 3.13, checked in parallel."""
    return {v: rest for v, *rest in check_pythons.check_all(check_pythons.PYTHONS, refs)}


def test_this_python_passes(refs):
    import altclip_np

    before = altclip_np.get_backend()
    assert compat_reference.check(refs) == []
    assert altclip_np.get_backend() == before  # the check tries each backend, then restores the caller's


def test_a_wrong_reference_is_reported(refs, tmp_path):
    """The check compares: one changed id, one changed pixel and one changed logit each fail their group."""
    bad = tmp_path / "refs"
    shutil.copytree(refs, bad)
    expected = json.loads((bad / "tokenizers.json").read_text(encoding="utf-8"))
    expected["ids"]["v2000"]["unicode"][7][1] += 1
    (bad / "tokenizers.json").write_text(json.dumps(expected, ensure_ascii=False), encoding="utf-8")
    pixels = dict(np.load(bad / "images" / "pixel_values.npz"))
    pixels["L"][0, 0, 0, 0] += 1e-5
    np.savez(bad / "images" / "pixel_values.npz", **pixels)
    outputs = dict(np.load(bad / "models" / "wide.npz"))
    outputs["joint/logits_per_image"][0, 0] += 2e-5
    np.savez(bad / "models" / "wide.npz", **outputs)
    assert compat_reference.check(bad) == ["tokenizer v2000 unicode", "image processor", "model wide (numpy)",
                                           "model wide (numba)"]


@pytest.mark.slow
@pytest.mark.parametrize("version", check_pythons.PYTHONS)
def test_other_python(results, version):
    status, seconds, output = results[version]
    if status == "missing":
        if os.environ.get("ALTCLIP_NP_REQUIRE_PYTHONS") == "1":
            pytest.fail(f"ALTCLIP_NP_REQUIRE_PYTHONS=1 but Python {version} is not installed: {output}")
        pytest.skip(f"Python {version} is not installed (pyenv install {version}): {output}")
    assert status == "passed", "\n" + check_pythons.summary(version, status, seconds, output)
