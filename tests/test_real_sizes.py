"""A model with the real BAAI/AltCLIP layer sizes (XLM-R-large + ViT-L/14 at 224 px) but one layer per tower,
described by a config.json in the official checkpoint's legacy form, loads and matches transformers."""
import json

import numpy as np
import pytest
import torch
import transformers

from altclip_np import AltCLIPModel
from conftest import max_diff, torch_run
from test_config import OFFICIAL_STYLE


@pytest.mark.slow
def test_real_layer_sizes_with_legacy_config(tmp_path):
    config = json.loads(json.dumps(OFFICIAL_STYLE))
    config["text_config_dict"]["num_hidden_layers"] = 1
    config["vision_config_dict"]["num_hidden_layers"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    ref = transformers.AltCLIPModel(transformers.AltCLIPConfig.from_json_file(str(tmp_path / "config.json")))
    ref.eval().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))  # keep the legacy form for our loader

    model = AltCLIPModel.from_pretrained(tmp_path)
    t, v = model.config.text_config, model.config.vision_config
    assert (t.vocab_size, t.hidden_size, t.num_attention_heads, t.intermediate_size, t.project_dim) == \
        (250002, 1024, 16, 4096, 768)
    assert (v.hidden_size, v.patch_size, v.image_size, v.num_patches) == (1024, 14, 224, 256)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 250002, (2, 16))
    ids[:, 0], ids[:, -1], ids[1, 9:] = 0, 2, 1
    kw = dict(input_ids=ids, attention_mask=(ids != 1).astype(np.int64),
              pixel_values=rng.standard_normal((2, 3, 224, 224)).astype(np.float32))
    ours = model(**kw)
    theirs = torch_run(ref, **kw)
    assert max_diff(ours, theirs) <= 1e-4  # observed 5.5e-6 (hidden states of magnitude ~10)
    assert max_diff(ours.text_embeds, theirs.text_embeds) <= 1e-6  # observed 9e-8
