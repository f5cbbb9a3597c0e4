"""Bad input and bad checkpoints give a clear ValueError / TypeError / OSError that says what was expected."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from altclip_np import AltCLIPModel, AltCLIPTextModel, AltCLIPVisionModel
from conftest import TINY_CONFIGS, images, text_batch


@pytest.fixture(scope="module")
def model(tiny):
    return AltCLIPModel.from_pretrained(tiny["base"][0])


def test_pixel_errors(model):
    cfg = TINY_CONFIGS["base"]["vision_config"]
    with pytest.raises(ValueError, match=r"input image size \(36\*30\) doesn't match.*interpolate_pos_encoding"):
        model.get_image_features(pixel_values=images(cfg, height=36))
    with pytest.raises(ValueError, match="rank 4"):
        model.get_image_features(pixel_values=images(cfg)[0])
    with pytest.raises(ValueError, match=r"\[batch, 3, height, width\]"):
        model.get_image_features(pixel_values=np.zeros((1, 4, 30, 30), np.float32))
    with pytest.raises(TypeError, match="float array"):
        model.get_image_features(pixel_values=np.array([["a"]]))
    with pytest.raises(ValueError, match="smaller than one"):
        model.get_image_features(pixel_values=np.zeros((1, 3, 4, 4), np.float32), interpolate_pos_encoding=True)


def test_text_errors(model):
    cfg = TINY_CONFIGS["base"]["text_config"]
    ids, mask = text_batch(cfg)
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 120\)"):
        model.get_text_features(input_ids=ids + 200)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model.get_text_features(input_ids=ids, attention_mask=mask[:, :-1])
    with pytest.raises(ValueError, match="longer than the model's position table allows \\(38 tokens\\)"):
        model.get_text_features(input_ids=np.full((1, 39), 5))
    model.get_text_features(input_ids=np.full((1, 38), 5))  # 38 fits: positions 2..39 of 40
    with pytest.raises(TypeError, match="integer array"):
        model.get_text_features(input_ids=ids.astype(np.float32))
    with pytest.raises(ValueError, match="rank 2"):
        model.get_text_features(input_ids=ids[0])
    with pytest.raises(ValueError, match="token_type_ids must lie"):
        model.get_text_features(input_ids=ids, token_type_ids=np.ones_like(ids))
    with pytest.raises(ValueError, match="needs input_ids"):
        model(pixel_values=images(TINY_CONFIGS["base"]["vision_config"]))
    with pytest.raises(ValueError, match="as many texts as images"):
        model(input_ids=ids, pixel_values=images(TINY_CONFIGS["base"]["vision_config"], batch=2), return_loss=True)


def test_inputs_embeds_errors(tiny):
    text = AltCLIPTextModel.from_pretrained(tiny["base"][0])
    ids, _ = text_batch(TINY_CONFIGS["base"]["text_config"])
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        text(input_ids=ids, inputs_embeds=np.zeros((3, 9, 32), np.float32))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        text()
    with pytest.raises(ValueError, match=r"\[batch, sequence, 32\]"):
        text(inputs_embeds=np.zeros((3, 9, 31), np.float32))


def test_missing_and_misshaped_tensors_are_all_named(tiny, tmp_path):
    src = tiny["base"][0]
    shutil.copy(src / "config.json", tmp_path / "config.json")
    state = load_file(src / "model.safetensors")
    del state["text_projection.weight"], state["vision_model.post_layernorm.bias"]
    state["logit_scale"] = np.zeros(2, np.float32)
    state["text_model.roberta.pooler.dense.weight"] = np.zeros((32, 32), np.float32)  # unused: ignored
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        AltCLIPModel.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "text_projection.weight" in msg and "vision_model.post_layernorm.bias" in msg
    assert "logit_scale: expected [], found [2]" in msg
    assert "pooler" not in msg
    # the towers alone do not need the joint model's tensors
    AltCLIPTextModel.from_pretrained(tmp_path)


def test_unused_keys_are_ignored(tiny, tmp_path):
    src = tiny["base"][0]
    shutil.copy(src / "config.json", tmp_path / "config.json")
    state = load_file(src / "model.safetensors")
    state["text_model.roberta.pooler.dense.weight"] = np.ones((32, 32), np.float32)
    state["text_model.roberta.embeddings.position_ids"] = np.arange(40)[None]
    save_file(state, str(tmp_path / "model.safetensors"))
    ids, mask = text_batch(TINY_CONFIGS["base"]["text_config"])
    a = AltCLIPTextModel.from_pretrained(tmp_path)(input_ids=ids, attention_mask=mask).pooler_output
    b = AltCLIPTextModel.from_pretrained(src)(input_ids=ids, attention_mask=mask).pooler_output
    np.testing.assert_array_equal(a, b)


def test_bad_checkpoint_files(tiny, tmp_path):
    with pytest.raises(OSError, match="local directory"):
        AltCLIPModel.from_pretrained(tmp_path / "nowhere")
    shutil.copy(tiny["base"][0] / "config.json", tmp_path / "config.json")
    with pytest.raises(OSError, match="model.safetensors"):
        AltCLIPModel.from_pretrained(tmp_path)
    data = (tiny["base"][0] / "model.safetensors").read_bytes()
    for cut in (4, 100, len(data) // 2):
        (tmp_path / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(OSError, match=r"model\.safetensors.*(truncated|corrupt)"):
            AltCLIPModel.from_pretrained(tmp_path)
    config = json.loads((tiny["base"][0] / "config.json").read_text())
    config["model_type"] = "clip"
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(data)
    with pytest.raises(OSError, match="not an AltCLIP"):
        AltCLIPVisionModel.from_pretrained(tmp_path)
