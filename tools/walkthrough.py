"""One image and one caption through the tiny model, step by step: what each step computes, with which function,
and the shape it gives. Prints Markdown (the README's "Reading the code" section carries it).

    python tools/walkthrough.py

The steps are the reference (the `numpy` backend's functions: layers.py, vision.py, text.py) called one by one,
block 0 of each tower opened up; the script checks that they add up to AltCLIPModel's own logits. Only shapes
and function names are printed, so the output is the same on every machine. Needs torch and transformers (to
write the tiny checkpoint, as tools/make_tiny_checkpoint.py does, into a temporary directory).
"""
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402

CAPTION = "a photo of a cat"
TEXT_TOKENS = 16  # padded to this length, so the shapes do not depend on the trained vocabulary
BEGIN = "<!-- walkthrough: begin (printed by tools/walkthrough.py; tests/test_walkthrough.py checks it) -->"
END = "<!-- walkthrough: end -->"
DIAGRAM = """```mermaid
flowchart TD
    caption["caption"] -->|"tokenizer.XLMRobertaTokenizer"| ids["input_ids, attention_mask"]
    image["image"] -->|"image_processing.CLIPImageProcessor"| pixels["pixel_values"]
    ids --> temb["text.embeddings"] --> tlayers["text.roberta_layer x N (post-LN)"]
    tlayers --> preln["pre_LN, transformation: layers.layer_norm, layers.linear"]
    preln -->|"token 0"| tproj["text_projection: layers.linear"]
    pixels --> vemb["vision.embeddings (vision.patch_embed + class token + positions)"]
    vemb --> vpre["pre_layrnorm: layers.layer_norm"] --> vlayers["vision.encoder_layer x N (pre-LN)"]
    vlayers -->|"class token"| post["post_layernorm: layers.layer_norm"] --> vproj["visual_projection: layers.linear"]
    tproj --> norm["model.l2_normalize"]
    vproj --> norm
    norm --> logits["logits = scale * text_embeds @ image_embeds.T"]
```"""


def table(rows):  # [(what, function, shape)] -> a Markdown table
    return "\n".join(["| step | computed by | shape |", "|---|---|---|",
                      *(f"| {what} | `{name}` | {shape} |" for what, name, shape in rows)])


class Steps:
    """Rows of the walkthrough's table: what, by which function, giving which shape."""

    def __init__(self):
        self.rows = []

    def __call__(self, what, fn, *args, **kwargs):
        out = fn(*args, **kwargs)
        self.note(what, fn, out)
        return out

    def note(self, what, fn, out):
        if not isinstance(fn, str):  # a function, or an object called (a tokenizer): module.qualified name
            qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__ + ".__call__"
            fn = f"{fn.__module__.removeprefix('altclip_np.')}.{qualname}"
        values = out.values() if isinstance(out, dict) else [out] if isinstance(out, np.ndarray) else out
        shapes = [a for a in values if isinstance(a, np.ndarray)]
        self.rows.append((what, fn, ", ".join(str(list(a.shape)) for a in shapes)))



def vision_steps(steps, weights, cfg, pixel_values):  # -> pooled [1, D]
    from altclip_np import layers, vision
    from altclip_np.layers import Params
    model, eps, n_head = Params(weights).vision_model, cfg.layer_norm_eps, cfg.num_attention_heads
    emb = model.embeddings
    steps("patch embedding: the stride-p conv as one matmul", vision.patch_embed, pixel_values,
          emb.patch_embedding.weight)
    x = steps("+ class token, + positions", vision.embeddings, emb, cfg, pixel_values, False)
    x = steps("pre_layrnorm", layers.layer_norm, x, model.pre_layrnorm.weight, model.pre_layrnorm.bias, eps)
    layer, block_in = model.encoder.layers[0], x
    ln1, ln2, attn = layer.layer_norm1, layer.layer_norm2, layer.self_attn
    h = steps("block 0: layer_norm1", layers.layer_norm, x, ln1.weight, ln1.bias, eps)
    q = steps("block 0: q_proj (k_proj, v_proj alike)", layers.linear, h, attn.q_proj.weight, attn.q_proj.bias)
    steps("block 0: split into heads", layers.split_heads, q, n_head)
    a, _ = steps("block 0: softmax(q k^T / sqrt(d) + mask) v, probabilities", layers.attention,
                 *(layers.split_heads(layers.linear(h, p.weight, p.bias), n_head)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj)), None, (x.shape[-1] // n_head) ** -0.5)
    a = steps("block 0: merge the heads", layers.merge_heads, a)
    a = steps("block 0: out_proj", layers.linear, a, attn.out_proj.weight, attn.out_proj.bias)
    x = x + a
    steps.note("block 0: x = x + self_attn(layer_norm1(x))", "vision.encoder_layer", x)
    h = steps("block 0: layer_norm2", layers.layer_norm, x, ln2.weight, ln2.bias, eps)
    h = steps("block 0: mlp.fc1", layers.linear, h, layer.mlp.fc1.weight, layer.mlp.fc1.bias)
    h = steps(f"block 0: {cfg.hidden_act}", layers.ACTIVATIONS[cfg.hidden_act], h)
    h = steps("block 0: mlp.fc2", layers.linear, h, layer.mlp.fc2.weight, layer.mlp.fc2.bias)
    x = x + h
    steps.note("block 0: x = x + mlp(layer_norm2(x))", "vision.encoder_layer", x)
    assert np.array_equal(x, vision.encoder_layer(block_in, layer, cfg)[0])
    for i in range(1, cfg.num_hidden_layers):
        x, _ = steps(f"block {i}", vision.encoder_layer, x, model.encoder.layers[i], cfg)
    return steps("post_layernorm of the class token", layers.layer_norm, x[:, 0], model.post_layernorm.weight,
                 model.post_layernorm.bias, eps)


def text_steps(steps, weights, cfg, input_ids, attention_mask):  # -> token 0's projection [1, P]
    from altclip_np import layers, text
    from altclip_np.inputs import text_inputs
    from altclip_np.layers import Params
    model, eps, n_head = Params(weights).text_model, cfg.layer_norm_eps, cfg.num_attention_heads
    inputs = text_inputs(cfg, input_ids, attention_mask, None, None, None)
    x = steps("word + token type + position embeddings, LayerNorm", text.embeddings, model.roberta.embeddings,
              cfg, inputs["input_ids"], None, inputs["token_type_ids"], inputs["position_ids"])
    mask = steps("padding as an additive mask", layers.additive_mask, attention_mask)
    layer, block_in = model.roberta.encoder.layer[0], x
    attn, out = layer.attention, layer.attention.output
    a, _ = steps("block 0: attention.self (q, k, v, heads), probabilities", layers.mha, x, mask, attn.self.query,
                 attn.self.key, attn.self.value, n_head)
    a = steps("block 0: attention.output.dense", layers.linear, a, out.dense.weight, out.dense.bias)
    x = steps("block 0: x = LayerNorm(x + attention(x))", layers.layer_norm, x + a, out.LayerNorm.weight,
              out.LayerNorm.bias, eps)
    h = steps("block 0: intermediate.dense", layers.linear, x, layer.intermediate.dense.weight,
              layer.intermediate.dense.bias)
    h = steps(f"block 0: {cfg.hidden_act}", layers.ACTIVATIONS[cfg.hidden_act], h)
    h = steps("block 0: output.dense", layers.linear, h, layer.output.dense.weight, layer.output.dense.bias)
    x = steps("block 0: x = LayerNorm(x + ffn(x))", layers.layer_norm, x + h, layer.output.LayerNorm.weight,
              layer.output.LayerNorm.bias, eps)
    assert np.array_equal(x, text.roberta_layer(block_in, mask, layer, cfg)[0])
    for i in range(1, cfg.num_hidden_layers):
        x, _ = steps(f"block {i}", text.roberta_layer, x, mask, model.roberta.encoder.layer[i], cfg)
    x = steps("pre_LN", layers.layer_norm, x, model.pre_LN.weight, model.pre_LN.bias, eps)
    x = steps("transformation", layers.linear, x, model.transformation.weight, model.transformation.bias)
    return x[:, 0]


def walkthrough(directory):
    """The Markdown, from the checkpoint in `directory`."""
    from PIL import Image

    import altclip_np
    from altclip_np import layers, model as model_module
    altclip_np.set_backend("numpy")  # the reference
    model = altclip_np.AltCLIPModel.from_pretrained(directory)
    processor = altclip_np.AltCLIPProcessor.from_pretrained(directory)
    weights, cfg = model.weights, model.config
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    steps = Steps()
    enc = steps(f"the caption {CAPTION!r}: input_ids, attention_mask", processor.tokenizer, [CAPTION],
                padding="max_length", max_length=TEXT_TOKENS, return_tensors="np")
    enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
    pixel_values = steps("a 48 x 40 image: resized, centre-cropped, normalised", processor.image_processor,
                         [image], return_tensors="np")["pixel_values"]
    vision_rows = len(steps.rows)
    pooled = vision_steps(steps, weights, cfg.vision_config, pixel_values)
    image_embeds = steps("visual_projection", layers.linear, pooled, weights["visual_projection.weight"])
    text_rows = len(steps.rows)
    token0 = text_steps(steps, weights, cfg.text_config, enc["input_ids"], enc["attention_mask"])
    text_embeds = steps("text_projection of token 0", layers.linear, token0, weights["text_projection.weight"])
    text_embeds, image_embeds = (steps(f"unit {name}", model_module.l2_normalize, e)
                                 for name, e in (("text_embeds", text_embeds), ("image_embeds", image_embeds)))
    logits = text_embeds @ image_embeds.T * np.exp(weights["logit_scale"])
    steps.note("logits_per_text = exp(logit_scale) * text_embeds @ image_embeds.T",
               model_module.AltCLIPModel.forward, logits)
    expected = model(**enc, pixel_values=pixel_values).logits_per_text
    assert np.allclose(logits, expected, rtol=0, atol=1e-6), (logits, expected)
    v = cfg.vision_config
    rows = steps.rows
    return "\n".join([
        BEGIN,
        "",
        textwrap.fill(
            "One image and one caption through the tiny model of `tools/make_tiny_checkpoint.py` (seed 0: "
            f"{v.num_hidden_layers} layers per tower, width {v.hidden_size}, {v.num_attention_heads} heads, "
            f"{v.patch_size} x {v.patch_size} patches of a {v.image_size} x {v.image_size} image), on the "
            "`numpy` backend, i.e. the reference. Block 0 of each tower is opened up; the steps add up to "
            "`AltCLIPModel`'s own logits. Under `numba` / `auto`, `fast.py` computes the same steps on the Numba "
            "kernels, with the bias, activation and residual fused into each GEMM. Printed by "
            "`python tools/walkthrough.py`.", width=110),
        "",
        DIAGRAM,
        "",
        "Inputs:",
        "",
        table(rows[:vision_rows]),
        "",
        "Vision tower:",
        "",
        table(rows[vision_rows:text_rows]),
        "",
        "Text tower and the logits:",
        "",
        table(rows[text_rows:]),
        "",
        END,
    ])


def main():
    with tempfile.TemporaryDirectory(prefix="altclip-walkthrough-") as tmp:
        print(walkthrough(make_tiny_checkpoint(Path(tmp) / "tiny", seed=0)))


if __name__ == "__main__":
    main()
