"""AltCLIPProcessor end to end against transformers' AltCLIPProcessor built from the same files, then through
the NumPy AltCLIPModel against transformers' AltCLIPModel.

Observed: input_ids/attention_mask identical, pixel_values max abs difference 0.0, logits_per_image max abs
difference 2.1e-6 on a tiny random model (checked at atol 1e-4).
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_np.processor import AltCLIPProcessor

transformers = pytest.importorskip("transformers")
pytest.importorskip("google.protobuf")

DATA = Path(__file__).parent / "data" / "multilingual.txt"
LINES = [line for line in DATA.read_bytes().decode("utf-8").split("\n") if line]
RNG = np.random.default_rng(1)
IMAGES = [Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(240, 320), (500, 200),
                                                                                       (224, 224), (30, 31)]]


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """A processor directory: a small unigram model, tokenizer_config.json (512) and the legacy preprocessor form."""
    import sentencepiece as spm

    directory = tmp_path_factory.mktemp("altclip_processor")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(LINES), model_prefix=str(directory / "sp"),
                                   model_type="unigram", vocab_size=1100, character_coverage=0.98,
                                   num_threads=2, minloglevel=2)
    (directory / "sp.model").rename(directory / "sentencepiece.bpe.model")
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "size": 224, "crop_size": 224, "resample": 3, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "CLIPImageProcessor"}))
    return directory


def reference_processor(directory):
    import warnings
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AltCLIPProcessor(CLIPImageProcessorPil.from_pretrained(directory),
                                             transformers.XLMRobertaTokenizer.from_pretrained(directory))


@pytest.mark.parametrize("options", [
    dict(padding=True), dict(padding="max_length", max_length=40, truncation=True),
    dict(padding="longest", truncation=True, max_length=9), dict(padding="max_length"),
])
def test_matches_transformers(checkpoint_dir, options):
    mine = AltCLIPProcessor.from_pretrained(checkpoint_dir)
    ref = reference_processor(checkpoint_dir)
    texts = LINES[::7]
    got = mine(text=texts, images=IMAGES, return_tensors="np", **options)
    expected = ref(text=texts, images=IMAGES, return_tensors="np", **options)
    assert sorted(got) == ["attention_mask", "input_ids", "pixel_values"]
    np.testing.assert_array_equal(got.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(got.attention_mask, expected["attention_mask"])
    assert got.pixel_values.dtype == np.float32
    assert np.abs(got.pixel_values - expected["pixel_values"]).max() <= 1e-6


def test_text_only_images_only_and_decode(checkpoint_dir):
    mine = AltCLIPProcessor.from_pretrained(checkpoint_dir)
    ref = reference_processor(checkpoint_dir)
    text = mine(text=LINES[:5], padding=True)
    assert sorted(text) == ["attention_mask", "input_ids"]
    assert sorted(mine(images=IMAGES[0])) == ["pixel_values"]
    for skip in (False, True):
        assert mine.batch_decode(text.input_ids, skip_special_tokens=skip) == \
            ref.batch_decode(text.input_ids, skip_special_tokens=skip)
    assert mine.decode(text.input_ids[0]) == ref.decode(text.input_ids[0])
    with pytest.raises(ValueError, match="text, images"):
        mine()


def test_save_pretrained_round_trip(checkpoint_dir, tmp_path):
    saved = AltCLIPProcessor.from_pretrained(checkpoint_dir).save_pretrained(tmp_path / "saved")
    mine = AltCLIPProcessor.from_pretrained(saved)
    ref = reference_processor(saved)
    got = mine(text=LINES[:9], images=IMAGES[:2], padding=True)
    expected = ref(text=LINES[:9], images=IMAGES[:2], padding=True, return_tensors="np")
    np.testing.assert_array_equal(got.input_ids, expected["input_ids"])
    assert np.abs(got.pixel_values - expected["pixel_values"]).max() <= 1e-6
    assert mine.tokenizer.model_max_length == 512


def test_model_end_to_end(checkpoint_dir, tmp_path):
    """Processor output fed through altclip_np.AltCLIPModel gives transformers' logits."""
    torch = pytest.importorskip("torch")
    from altclip_np import AltCLIPModel

    processor = AltCLIPProcessor.from_pretrained(checkpoint_dir)
    torch.manual_seed(0)
    config = transformers.AltCLIPConfig(
        text_config=dict(vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=37, project_dim=24, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                           image_size=224, patch_size=32),
        projection_dim=16)
    reference = transformers.AltCLIPModel(config).eval()
    reference.save_pretrained(tmp_path / "model")
    inputs = processor(text=LINES[::11], images=IMAGES, padding="max_length", max_length=40, truncation=True)
    with torch.no_grad():
        expected = reference(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits_per_image.numpy()
    got = AltCLIPModel.from_pretrained(tmp_path / "model")(**inputs).logits_per_image
    assert got.shape == expected.shape == (len(IMAGES), len(LINES[::11]))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def _real_checkpoint():
    """ALTCLIP_CHECKPOINT names a directory, or BAAI/AltCLIP is already in the Hugging Face cache."""
    path = os.environ.get("ALTCLIP_CHECKPOINT")
    if path:
        return path if Path(path).is_dir() else None
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download("BAAI/AltCLIP", local_files_only=True)
    except Exception:
        return None


@pytest.mark.slow
def test_real_checkpoint():
    """The published transformers integration result for BAAI/AltCLIP.

    Run with ALTCLIP_CHECKPOINT=/path/to/BAAI/AltCLIP (or the model in the HF cache) and ALTCLIP_TEST_IMAGE set
    to COCO val2017 000000039769.jpg (two cats on a couch).
    """
    checkpoint, image = _real_checkpoint(), os.environ.get("ALTCLIP_TEST_IMAGE")
    if checkpoint is None or not image or not Path(image).is_file():
        pytest.skip("needs the BAAI/AltCLIP checkpoint (ALTCLIP_CHECKPOINT or HF cache) and ALTCLIP_TEST_IMAGE")
    from altclip_np import AltCLIPModel

    processor = AltCLIPProcessor.from_pretrained(checkpoint)
    inputs = processor(text=["一张猫的照片", "一张狗的照片"], images=image, padding=True)
    logits = AltCLIPModel.from_pretrained(checkpoint)(**inputs).logits_per_image
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, [[9.9942e-01, 5.7805e-04]], atol=5e-3)
