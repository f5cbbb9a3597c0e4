"""Parity of every output of altclip_np's models with transformers on tiny random checkpoints.

Observed (float32, both backends): max abs difference <= 2e-6 on logits, <= 1.5e-6 on hidden states,
<= 1e-7 on attention probabilities; the bound asserted is 1e-5.
"""
import numpy as np
import pytest
import torch

from altclip_np import AltCLIPModel, AltCLIPTextModel, AltCLIPVisionModel
from altclip_np.vision import bicubic_resize
from conftest import TINY_CONFIGS, images, make_tiny_checkpoint, max_diff, text_batch, torch_run

TOL = 1e-5


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_joint_model_every_field(tiny, backend, name):
    directory, ref = tiny[name]
    cfg = TINY_CONFIGS[name]
    ids, mask = text_batch(cfg["text_config"], batch=3)
    px = images(cfg["vision_config"], batch=3)
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=px, return_loss=True, output_hidden_states=True,
              output_attentions=True)
    ours = AltCLIPModel.from_pretrained(directory)(**kw)
    theirs = torch_run(ref, **kw)
    assert list(ours.keys()) == list(theirs.keys())
    assert len(ours.text_model_output.hidden_states) == cfg["text_config"]["num_hidden_layers"] + 1
    assert len(ours.vision_model_output.attentions) == cfg["vision_config"]["num_hidden_layers"]
    assert max_diff(ours, theirs) <= TOL
    assert ours.logits_per_image.dtype == np.float32


def test_single_image_many_texts_and_tuple_output(tiny, backend):
    directory, ref = tiny["base"]
    cfg = TINY_CONFIGS["base"]
    ids, mask = text_batch(cfg["text_config"], batch=4, seq=6, pad_rows=(0, 2))
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=images(cfg["vision_config"], batch=1))
    model = AltCLIPModel.from_pretrained(directory)
    ours = model(**kw, return_dict=False)
    theirs = torch_run(ref, **kw, return_dict=False)
    assert isinstance(ours, tuple) and len(ours) == len(theirs) == 6  # no loss: it is left out, as in transformers
    assert max_diff(ours, theirs) <= TOL
    assert ours[0].shape == (1, 4)  # logits_per_image
    by_key = model(**kw)
    assert by_key["logits_per_text"] is not None and np.array_equal(by_key[1], by_key.logits_per_text)


def test_features(tiny, backend):
    directory, ref = tiny["wide"]
    cfg = TINY_CONFIGS["wide"]
    model = AltCLIPModel.from_pretrained(directory)
    ids, mask = text_batch(cfg["text_config"], batch=2, seq=7)
    ours = model.get_text_features(input_ids=ids, attention_mask=mask)
    theirs = torch_run(ref.get_text_features, input_ids=ids, attention_mask=mask)
    assert ours.pooler_output.shape == (2, cfg["projection_dim"])
    assert max_diff(ours, theirs) <= TOL
    px = images(cfg["vision_config"], batch=2)
    ours = model.get_image_features(pixel_values=px)
    theirs = torch_run(ref.get_image_features, pixel_values=px)
    assert ours.pooler_output.shape == (2, cfg["projection_dim"])
    assert max_diff(ours, theirs) <= TOL
    assert max_diff(model.get_image_features(pixel_values=px, return_dict=False),
                    torch_run(ref.get_image_features, pixel_values=px, return_dict=False)) <= TOL


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_encode_text_and_image_equal_the_features(tiny, backend, name):
    # encode_* leave padding out of every layer and compute only the pooled token in the last one.
    # Observed max abs difference from transformers' pooler_output: 1.1e-7 (texts), 3.8e-7 (images).
    directory, ref = tiny[name]
    cfg = TINY_CONFIGS[name]
    model = AltCLIPModel.from_pretrained(directory)
    ids, mask = text_batch(cfg["text_config"], batch=5, seq=9, pad_rows=(1, 2))
    mask[2, 0] = 0  # the pooled token itself is padding: it is still computed, as in transformers
    mask[3] = 0  # no real token: every key is masked and attended evenly, padding's values included
    for kw in (dict(input_ids=ids), dict(input_ids=ids, attention_mask=mask)):
        theirs = torch_run(ref.get_text_features, **kw).pooler_output
        assert max_diff(model.encode_text(**kw), theirs) <= TOL
    assert max_diff(model.encode_text(**kw, normalize=True), torch.nn.functional.normalize(theirs, dim=-1)) <= TOL
    px = images(cfg["vision_config"], batch=2)
    assert max_diff(model.encode_image(px), torch_run(ref.get_image_features, pixel_values=px).pooler_output) <= TOL
    size = cfg["vision_config"]["image_size"]
    px = images(cfg["vision_config"], batch=1, height=size + 9, width=size - 5)
    kw = dict(pixel_values=px, interpolate_pos_encoding=True)
    assert max_diff(model.encode_image(**kw), torch_run(ref.get_image_features, **kw).pooler_output) <= TOL


def test_explicit_position_and_token_type_ids(tiny, backend):
    directory, ref = tiny["wide"]  # type_vocab_size=2
    cfg = TINY_CONFIGS["wide"]
    ids, mask = text_batch(cfg["text_config"], batch=2, seq=8)
    rng = np.random.default_rng(3)
    kw = dict(input_ids=ids, attention_mask=mask, token_type_ids=rng.integers(0, 2, ids.shape),
              position_ids=rng.integers(0, 24, ids.shape), pixel_values=images(cfg["vision_config"], batch=2))
    assert max_diff(AltCLIPModel.from_pretrained(directory)(**kw), torch_run(ref, **kw)) <= TOL
    kw["position_ids"] = np.arange(4, 12)[None]  # broadcast over the batch
    assert max_diff(AltCLIPModel.from_pretrained(directory)(**kw), torch_run(ref, **kw)) <= TOL


def test_no_mask_means_attend_everywhere(tiny, backend):
    directory, ref = tiny["deep"]
    ids, _ = text_batch(TINY_CONFIGS["deep"]["text_config"], batch=2, seq=5, pad_rows=())
    ours = AltCLIPTextModel.from_pretrained(directory)(input_ids=ids)
    assert max_diff(ours, torch_run(ref.text_model, input_ids=ids)) <= TOL


@pytest.mark.parametrize("height,width", [(36, 48), (48, 24), (42, 42), (18, 30), (31, 44)])
def test_interpolate_pos_encoding(tiny, backend, height, width):
    directory, ref = tiny["base"]  # 30 px, patch 6: a 5x5 grid resized to (height // 6, width // 6)
    px = images(TINY_CONFIGS["base"]["vision_config"], batch=2, height=height, width=width)
    kw = dict(pixel_values=px, interpolate_pos_encoding=True, output_hidden_states=True)
    ours = AltCLIPVisionModel.from_pretrained(directory)(**kw)
    theirs = torch_run(ref.vision_model, **kw)
    assert max_diff(ours, theirs) <= TOL


@pytest.mark.parametrize("src,dst", [((5, 5), (6, 8)), ((16, 16), (7, 3)), ((3, 3), (1, 9)), ((4, 4), (4, 4)),
                                     ((24, 24), (37, 50))])
def test_bicubic_matches_torch_interpolate(src, dst):
    grid = np.random.default_rng(0).standard_normal((*src, 5)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=dst, mode="bicubic",
                                          align_corners=False)[0].permute(1, 2, 0).numpy()
    ours = bicubic_resize(grid, *dst)
    # torch sums the 16 taps in float32 in its own order; observed <= 2.3e-6 on values of magnitude ~3
    assert np.abs(ours - ref).max() <= 5e-6


def test_text_model_inputs_embeds(tiny, backend):
    directory, ref = tiny["base"]
    embeds = np.random.default_rng(1).standard_normal((2, 6, 32)).astype(np.float32)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2])
    kw = dict(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    ours = AltCLIPTextModel.from_pretrained(directory)(**kw)
    assert max_diff(ours, torch_run(ref.text_model, **kw)) <= TOL


def test_towers_from_full_and_tower_only_checkpoints(tiny, backend, tmp_path):
    directory, ref = tiny["base"]
    cfg = TINY_CONFIGS["base"]
    ids, mask = text_batch(cfg["text_config"])
    px = images(cfg["vision_config"])
    text_ref, vision_ref = ref.text_model, ref.vision_model
    text_ref.save_pretrained(tmp_path / "text")  # keys roberta.*, pre_LN.*, transformation.*
    vision_ref.save_pretrained(tmp_path / "vision")  # keys embeddings.*, encoder.layers.*, ...
    for text_dir, vision_dir in [(directory, directory), (tmp_path / "text", tmp_path / "vision")]:
        ours = AltCLIPTextModel.from_pretrained(text_dir)(input_ids=ids, attention_mask=mask,
                                                          output_hidden_states=True)
        assert max_diff(ours, torch_run(text_ref, input_ids=ids, attention_mask=mask,
                                        output_hidden_states=True)) <= TOL
        ours = AltCLIPVisionModel.from_pretrained(vision_dir)(pixel_values=px, output_attentions=True)
        assert max_diff(ours, torch_run(vision_ref, pixel_values=px, output_attentions=True)) <= TOL


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "sharded"])
def test_half_precision_and_sharded_checkpoints(tmp_path, dtype):
    if dtype == "sharded":
        ref = make_tiny_checkpoint(tmp_path, "base", seed=5, max_shard_size="30KB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    else:
        ref = make_tiny_checkpoint(tmp_path, "base", seed=5, dtype=getattr(torch, dtype))
    model = AltCLIPModel.from_pretrained(tmp_path)
    assert all(w.dtype == np.float32 for w in model.weights.values())
    cfg = TINY_CONFIGS["base"]
    ids, mask = text_batch(cfg["text_config"], batch=2)
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=images(cfg["vision_config"], batch=2))
    assert max_diff(model(**kw), torch_run(ref, **kw)) <= TOL  # ref: transformers upcasting the same file


def test_weights_are_memory_mapped_views(tiny):
    model = AltCLIPModel.from_pretrained(tiny["base"][0])
    w = model.weights["vision_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert not w.flags.writeable and not w.flags.owndata  # a view of the mapped file, not a copy
    np.testing.assert_array_equal(w, tiny["base"][1].vision_model.encoder.layers[0].self_attn.q_proj.weight
                                  .detach().numpy())


def test_release_weights_changes_nothing_but_residency(tiny):
    """Handing a layer's pages back to the page cache after use gives bit-identical outputs."""
    directory = tiny["base"][0]
    cfg = TINY_CONFIGS["base"]
    ids, mask = text_batch(cfg["text_config"])
    kw = dict(input_ids=ids, attention_mask=mask, pixel_values=images(cfg["vision_config"], batch=3))
    keep = AltCLIPModel.from_pretrained(directory, release_weights=False)
    assert not keep.text_model.release_weights and not keep.vision_model.release_weights
    release = AltCLIPModel.from_pretrained(directory)
    for _ in range(2):  # the second call re-maps the released pages
        np.testing.assert_array_equal(release(**kw).logits_per_image, keep(**kw).logits_per_image)
