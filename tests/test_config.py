"""Configs: transformers' field names and defaults, legacy *_config_dict keys, unknown keys, round trips."""
import json

import pytest
import transformers

from altclip_np import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig
from altclip_np.config import read_config

# The official BAAI/AltCLIP config.json carries both the current and the legacy keys, plus keys no config knows.
OFFICIAL_STYLE = {
    "architectures": ["AltCLIPModel"], "direct_kd": False, "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592, "model_type": "altclip", "num_layers": 3, "projection_dim": 768,
    "text_config": {"hidden_size": 768, "num_hidden_layers": 12, "pooler_fn": "cls", "vocab_size": 250002,
                    "project_dim": 768, "model_type": "altclip_text_model", "learn_encoder": False},
    "text_config_dict": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                         "num_hidden_layers": 24, "project_dim": 768, "vocab_size": 250002, "pooler_fn": "cls"},
    "vision_config": {"hidden_size": 768, "patch_size": 32, "model_type": "altclip_vision_model"},
    "vision_config_dict": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                           "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
    "torch_dtype": "float32", "transformers_version": None,
}


def _fields(ours, theirs):
    theirs = theirs.to_dict()
    return {k: theirs[k] for k in ours.to_dict() if k != "model_type"}, \
        {k: v for k, v in ours.to_dict().items() if k != "model_type"}


@pytest.mark.parametrize("ours,theirs", [(AltCLIPTextConfig, transformers.AltCLIPTextConfig),
                                         (AltCLIPVisionConfig, transformers.AltCLIPVisionConfig)])
def test_tower_defaults_match_transformers(ours, theirs):
    expected, got = _fields(ours(), theirs())
    assert got == expected


def test_stated_defaults():
    t, v, j = AltCLIPTextConfig(), AltCLIPVisionConfig(), AltCLIPConfig()
    assert (t.vocab_size, t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size,
            t.max_position_embeddings, t.hidden_act, t.layer_norm_eps, t.pad_token_id, t.bos_token_id,
            t.eos_token_id, t.type_vocab_size, t.project_dim) == (250002, 1024, 24, 16, 4096, 514, "gelu", 1e-5,
                                                                  1, 0, 2, 1, 768)
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.image_size,
            v.patch_size, v.hidden_act, v.layer_norm_eps) == (768, 3072, 12, 12, 224, 32, "quick_gelu", 1e-5)
    assert (j.projection_dim, j.logit_scale_init_value) == (768, 2.6592)


def test_official_legacy_config_like_transformers(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(OFFICIAL_STYLE))
    ours = read_config(AltCLIPConfig, path)
    theirs = transformers.AltCLIPConfig.from_json_file(str(path))
    for mine, ref in [(ours.text_config, theirs.text_config), (ours.vision_config, theirs.vision_config)]:
        expected, got = _fields(mine, ref)
        assert got == expected
    assert ours.text_config.hidden_size == 1024 and ours.vision_config.patch_size == 14  # the _dict value wins
    assert ours.projection_dim == 768
    # a tower read out of the full config
    assert read_config(AltCLIPVisionConfig, path) == ours.vision_config
    assert AltCLIPConfig.from_pretrained(tmp_path) == ours
    assert AltCLIPTextConfig.from_pretrained(tmp_path) == ours.text_config


def test_kwargs_nested_dicts_and_round_trip():
    cfg = AltCLIPConfig(text_config={"hidden_size": 64, "num_attention_heads": 4, "unknown_key": 1},
                        vision_config=AltCLIPVisionConfig(image_size=[64, 64], patch_size=16), projection_dim=32)
    assert cfg.text_config.hidden_size == 64 and cfg.vision_config.image_size == 64
    assert AltCLIPConfig.from_dict(cfg.to_dict()) == cfg
    assert AltCLIPTextConfig.from_dict(cfg.text_config.to_dict()) == cfg.text_config
    assert cfg.to_dict()["text_config"]["model_type"] == "altclip_text_model"
    json.dumps(cfg.to_dict())  # serialisable


def test_bad_configs(tmp_path):
    with pytest.raises(ValueError, match="not a multiple"):
        AltCLIPTextConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="positive integer"):
        AltCLIPVisionConfig(patch_size=0)
    with pytest.raises(TypeError, match="expected a dict"):
        AltCLIPConfig(text_config=5)
    bert = tmp_path / "config.json"
    bert.write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(OSError, match="not an AltCLIP"):
        read_config(AltCLIPConfig, bert)
    bert.write_text("{not json")
    with pytest.raises(OSError, match="not valid JSON"):
        read_config(AltCLIPConfig, bert)
