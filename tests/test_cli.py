"""The installed `altclip-np` command, run as a subprocess on a tiny checkpoint made by tools/make_tiny_checkpoint.py.

Numbers are checked against the library API (altclip_np) and against transformers. The index's safety
(concurrent writers, kills, a full disk, malformed files) is tested in tests/test_index.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_np import cli, index, parity
from conftest import ROOT, run

LABELS = ["猫", "dog", "고양이", "a red car"]


def pattern(kind, height, width):
    y, x = np.mgrid[0:height, 0:width]
    rgb = {"red": [(220, 30, 30)], "stripes": [(0, 0, 0), (255, 255, 0)],
           "checks": [(255, 255, 255), (0, 0, 200)], "gradient": None, "green": [(20, 200, 40)]}[kind]
    if rgb is None:
        return np.stack([x * 255 // width, y * 255 // height, 128 + 0 * x], -1).astype(np.uint8)
    index = {"stripes": (x // 4) % 2, "checks": (x // 5 + y // 5) % 2}.get(kind, 0 * x)
    return np.array(rgb, dtype=np.uint8)[index]


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """5 readable images (2 in a subfolder), one broken .png and a .txt that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for name, kind, shape in [("a.png", "red", (40, 48)), ("b.jpg", "stripes", (60, 30)),
                              ("sub/c.png", "checks", (33, 33)), ("sub/d.bmp", "gradient", (50, 70)),
                              ("e.png", "green", (31, 45))]:
        Image.fromarray(pattern(kind, *shape)).save(root / name)
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    return root


def readable(photos):
    return sorted(str(p) for p in photos.rglob("*") if p.suffix in (".png", ".jpg", ".bmp") and p.name != "broken.png")


def image_embeddings(ours, paths):
    model, processor = ours
    pixels = processor(images=list(paths), return_tensors="np")["pixel_values"]
    feats = model.get_image_features(pixel_values=pixels).pooler_output
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def load_index(out):  # -> (rows [n, d], {"model", "kind", "dim", "sources"}) in index order
    found = index.open_index(out)
    rows = np.concatenate([found.rows(i) for i in range(len(found.shards))])
    sources = [m["source"] for i in range(len(found.shards)) for m in found.metadata(i)]
    return rows, {**found.header, "sources": sources}


@pytest.fixture(scope="session")
def image_index(ckpt, photos, tmp_path_factory):
    """An uninterrupted embed of the photos folder: (index path, stderr)."""
    out = tmp_path_factory.mktemp("index") / "photos.index"
    result = run("embed", photos, "--out", out, "--model", ckpt, "--batch-size", 2)
    return out, result.stderr


# ---- classify ----------------------------------------------------------------------------------------------

def test_classify_json_matches_library_and_transformers(ckpt, ours, photos):
    import torch
    import transformers
    images = [photos / "a.png", photos / "b.jpg", photos / "sub/d.bmp"]
    template = "a photo of a {}."
    got = json.loads(run("classify", *images, "--labels", *LABELS, "--model", ckpt, "--json").stdout)
    assert [r["image"] for r in got] == [str(p) for p in images]
    texts = [template.format(label) for label in LABELS]

    model, processor = ours
    enc = processor(text=texts, images=[str(p) for p in images], padding=True, return_tensors="np")
    lib = cli.softmax(model(**enc).logits_per_image)
    ref_processor = transformers.AltCLIPProcessor.from_pretrained(ckpt)
    ref_model = transformers.AltCLIPModel.from_pretrained(ckpt).eval()
    with torch.no_grad():
        ref = ref_model(**ref_processor(text=texts, images=[str(p) for p in images], padding=True,
                                        return_tensors="pt")).logits_per_image.softmax(-1).double().numpy()
    for result, lib_row, ref_row in zip(got, lib, ref):
        scores = [item["score"] for item in result["labels"]]
        assert abs(sum(scores) - 1) < 1e-9 and scores == sorted(scores, reverse=True)
        order = [LABELS.index(item["label"]) for item in result["labels"]]
        assert np.diff(np.sort(ref_row)).min() > 1e-4  # the ranking below is not decided by rounding
        assert order == list(np.argsort(-ref_row))
        np.testing.assert_allclose(scores, lib_row[order], atol=1e-6)
        np.testing.assert_allclose(scores, ref_row[order], atol=1e-5)


def test_classify_text_output_top_k(ckpt, photos):
    out = run("classify", photos / "e.png", "--labels", *LABELS, "--model", ckpt, "--top-k", 2,
              "--template", "{}").stdout.splitlines()
    assert out[0] == str(photos / "e.png") and len(out) == 3
    probs = [float(line.split()[0]) for line in out[1:]]
    assert probs == sorted(probs, reverse=True) and all(line.split(maxsplit=1)[1] in LABELS for line in out[1:])


# ---- embed and search --------------------------------------------------------------------------------------

def test_embed_images(image_index, ours, photos, ckpt):
    out, stderr = image_index
    rows, meta = load_index(out)
    assert meta["sources"] == readable(photos)  # sorted, recursive, image extensions only, broken one skipped
    assert meta["model"] == str(Path(ckpt).resolve()) and meta["kind"] == "image" and meta["dim"] == 16
    assert rows.dtype == np.float32 and rows.shape == (5, 16)
    np.testing.assert_allclose(rows, image_embeddings(ours, meta["sources"]), atol=1e-6)
    assert "warning: skipping" in stderr and "broken.png" in stderr and "img/s" in stderr  # tqdm throughput
    assert not list(out.rglob("*tmp*")) and sorted(p.name for p in out.iterdir()) == [".lock", "manifest.json",
                                                                                     "shards"]


def test_search_ranks_like_the_library(image_index, ours):
    out, _ = image_index
    query = "a red car"
    hits = json.loads(run("search", out, query, "--top-k", 3, "--json").stdout)  # model from the sidecar
    rows, meta = load_index(out)
    model, processor = ours
    q = model.get_text_features(**processor(text=[query], padding=True, return_tensors="np")).pooler_output[0]
    scores = rows @ (q / np.linalg.norm(q))
    expected = np.argsort(-scores)[:3]
    assert [h["row"] for h in hits] == list(expected) and [h["rank"] for h in hits] == [1, 2, 3]
    assert [h["source"] for h in hits] == [meta["sources"][i] for i in expected]
    np.testing.assert_allclose([h["score"] for h in hits], scores[expected], atol=1e-6)


def test_embed_text_lines(ckpt, ours, tmp_path):
    long_line = "a very long caption " * 40  # more tokens than the model's 64: truncated, not an error
    lines = ["a photo of a cat", "一只猫的照片", "", "a photo of a cat", "고양이 사진", long_line.strip()]
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "captions"
    run("embed", "--text", tmp_path / "captions.txt", "--out", out, "--model", ckpt)
    rows, meta = load_index(out)
    # blank lines and duplicates are dropped
    expected = ["a photo of a cat", "一只猫的照片", "고양이 사진", long_line.strip()]
    assert meta["sources"] == expected and meta["kind"] == "text"
    model, processor = ours
    enc = processor(text=expected, padding=True, truncation=True, max_length=64, return_tensors="np")
    feats = model.get_text_features(**enc).pooler_output
    np.testing.assert_allclose(rows, feats / np.linalg.norm(feats, axis=1, keepdims=True), atol=1e-6)


# ---- errors and help ---------------------------------------------------------------------------------------

ERRORS = {  # name: (arguments, exit status, text in the message); "{ckpt}", "{photos}", "{tmp}" filled in
    "no labels": (["classify", "{photos}/a.png", "--labels", "--model", "{ckpt}"], 2, "--labels"),
    "blank labels": (["classify", "{photos}/a.png", "--labels", " ", "--model", "{ckpt}"], 1, "no labels"),
    "unreadable image": (["classify", "{photos}/a.png", "{photos}/broken.png", "--labels", "x", "--model",
                          "{ckpt}"], 1, "broken.png"),
    "missing image": (["classify", "{tmp}/nope.png", "--labels", "x", "--model", "{ckpt}"], 1, "nope.png"),
    "missing model": (["classify", "{photos}/a.png", "--labels", "x", "--model", "{tmp}/no-model"], 1,
                      "cannot load model"),
    "unwritable output": (["embed", "{photos}", "--out", "{tmp}/no/such/dir/x", "--model", "{ckpt}"], 1,
                          "cannot write"),
    "output .npy": (["embed", "{photos}", "--out", "{tmp}/x.npy", "--model", "{ckpt}"], 1, "index directory"),
    "bad local cluster": (["embed", "{photos}", "--out", "{tmp}/x", "--scheduler", "local:0"], 1, "local:N"),
    "nothing to embed": (["embed", "--out", "{tmp}/x.npy"], 1, "--text"),
    "missing index": (["search", "{tmp}/none", "cat"], 1, "no index"),
    "not an index": (["search", "{photos}/a.png", "cat"], 1, "not an altclip-np index"),
    "bad top-k": (["search", "{tmp}/none.npy", "cat", "--top-k", "0"], 2, "positive integer"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_are_one_line(name, ckpt, photos, tmp_path):
    args, status, text = ERRORS[name]
    args = [a.format(ckpt=ckpt, photos=photos, tmp=tmp_path) for a in args]
    result = run(*args, expect=status)
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("altclip-np")
    assert text in result.stderr


@pytest.mark.parametrize("command", [[], ["classify"], ["embed"], ["search"], ["index"], ["index", "build"],
                                     ["index", "convert"], ["parity"], ["warmup"], ["tune"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage: altclip-np" in capsys.readouterr().out


# ---- parity ------------------------------------------------------------------------------------------------

def test_parity_table_matches_a_direct_comparison(ckpt, ours):
    import torch
    import transformers
    report = json.loads(run("parity", "--model", ckpt, "--json").stdout)
    rows = {row["layer"]: row for row in report["rows"]}
    layers = [f"{tower}.layer.{i}" for tower in ("text", "vision") for i in range(2)]
    expected = ["processor.input_ids", "processor.attention_mask", "processor.pixel_values", "text.embeddings",
                "text.pre_LN", "text.transformation", "text.projection", "vision.embeddings", "vision.pre_layrnorm",
                "vision.post_layernorm", "vision.projection", "text_embeds", "image_embeds", "logits_per_image",
                "encode_text", "encode_image"]
    assert sorted(rows) == sorted(expected + layers)
    assert report["first_past_tolerance"] is None and all(row["ok"] for row in rows.values())

    model, processor = ours  # the same inputs, compared here without parity.py's code
    enc = processor(text=parity.DEFAULT_TEXTS, images=parity.default_images(), padding=True, return_tensors="np")
    out = model(**enc, output_hidden_states=True)
    ref_model = transformers.AltCLIPModel.from_pretrained(ckpt, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = ref_model(**{k: torch.from_numpy(v) for k, v in enc.items()}, output_hidden_states=True)
        ref_text = ref_model.get_text_features(input_ids=torch.from_numpy(enc["input_ids"]),
                                               attention_mask=torch.from_numpy(enc["attention_mask"])).pooler_output
    direct = {"text.layer.1": (out.text_model_output.hidden_states[2], ref.text_model_output.hidden_states[2]),
              "vision.layer.0": (out.vision_model_output.hidden_states[1], ref.vision_model_output.hidden_states[1]),
              "vision.post_layernorm": (out.vision_model_output.pooler_output,
                                        ref.vision_model_output.pooler_output),
              "logits_per_image": (out.logits_per_image, ref.logits_per_image),
              "encode_text": (model.encode_text(enc["input_ids"], enc["attention_mask"]), ref_text)}
    for name, (a, b) in direct.items():
        a, b = np.float64(a), b.double().numpy()
        max_abs = np.abs(a - b).max()
        assert rows[name]["max_abs"] == pytest.approx(max_abs, rel=1e-6, abs=1e-12), name
        assert rows[name]["max_rel"] == pytest.approx(max_abs / np.abs(b).max(), rel=1e-6, abs=1e-12), name
        cosine = (a.ravel() @ b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b)
        assert rows[name]["cosine"] == pytest.approx(cosine, abs=1e-12), name
        assert rows[name]["shape"] == list(b.shape)


def test_parity_as_a_module_in_the_checkouts_root(ckpt):
    """`python -m altclip_np` puts the working directory on sys.path; in the repository's root its kernels/ folder
    shadowed Hugging Face's `kernels`, which transformers imports, and parity failed to load transformers."""
    result = subprocess.run([sys.executable, "-m", "altclip_np", "parity", "--model", str(ckpt), "--json"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["first_past_tolerance"] is None and len(report["rows"]) == 20  # as the test above lists them


def test_parity_flags_the_first_layer_past_tolerance(ckpt, capsys):
    assert cli.main(["parity", "--model", str(ckpt), "--tol", "1e-12", "--text", "hello"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("first layer past tolerance: text.embeddings")
    assert "past tolerance" in next(line for line in lines if line.startswith("text.embeddings"))

    pairs = [("a", np.ones(3), np.ones(3)), ("b", np.array([1.0, 2.0]), np.array([1.0, 2.1])),
             ("c", np.zeros(2), np.zeros(3))]
    rows, first = parity.report(pairs, tol=1e-3)
    assert first == "b" and [r["ok"] for r in rows] == [True, False, False] and "error" in rows[2]
    assert rows[1]["max_abs"] == pytest.approx(0.1) and rows[1]["max_rel"] == pytest.approx(0.1 / 2.1)


def test_parity_without_transformers_is_one_line(tmp_path):
    fake = tmp_path / "torch"  # shadows the real torch: importing it fails as if it were not installed
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'torch'\")\n")
    result = run("parity", "--model", tmp_path, env={"PYTHONPATH": str(tmp_path)}, expect=1)
    assert result.stderr.strip().count("\n") == 0 and "needs torch and transformers" in result.stderr


def test_cold_first_run_says_it_compiles_and_gives_the_warm_bits(ckpt, photos, tmp_path):
    """The one cold run of the suite (an empty Numba cache: it compiles the model's kernels, ~20-40 s of CPU).
    Its result must equal, bit for bit, the runs that load the kernels from the cache, with 2 threads and
    with 1 (before the fix the cold run printed 0.7741795990490558 against the warm 0.7741798856103299)."""
    args = ["classify", photos / "a.png", photos / "b.jpg", "--labels", *LABELS, "--model", ckpt, "--json"]
    cache = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), "ALTCLIP_NP_CACHE_DIR": str(tmp_path / "cache")}

    def classify(env, timeout=120):
        return run(*args, env={**cache, **env}, timeout=timeout)

    cold = classify({}, timeout=900)
    # two lines, nothing else: the kernels compile, then the weights are packed into their panels
    compiling, packing = cold.stderr.splitlines()  # (more lines: a ValueError here)
    assert compiling.startswith("altclip-np: compiling the Numba kernels for this CPU (once, about ")
    assert packing.startswith("altclip-np: packing 27 weights for the GEMM into "), packing
    warm = classify({})
    assert warm.stderr == ""  # loaded from the cache: nothing to say
    assert warm.stdout == cold.stdout  # the JSON prints every score with repr(): equal text is equal bits
    assert classify({"NUMBA_NUM_THREADS": "1"}).stdout == cold.stdout
    # classify compiled the model's five kernels and nothing else; warmup compiles the one left
    lines = run("warmup", env=cache).stdout.splitlines()
    assert lines[:6] == ["cached    _softmax_rows", "cached    _layer_norm_rows", "compiled  _bias_act_residual_rows",
                         "cached    _attention", "cached    _pack_panels", "cached    _matmul_panels"], lines
    assert lines[6].startswith("6 Numba kernels ready for this CPU (1 compiled now")
