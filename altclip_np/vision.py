"""AltCLIP's vision tower: CLIP ViT (patch conv, class token, positions, pre-LN encoder, post-LN on [CLS]).

Reference: transformers/models/altclip/modeling_altclip.py (AltCLIPVisionEmbeddings ... AltCLIPVisionModel).
B = batch, N = patches, T = N + 1 tokens, D = hidden size, p = patch size.
"""
import math

import numpy as np

from .layers import ACTIVATIONS, Params, check_activation, layer_norm, linear, mha

PREFIX = "vision_model."  # every key of the vision tower starts with this (AltCLIPModel's naming)


def expected_weights(cfg):  # {canonical checkpoint key: shape} for an AltCLIPVisionConfig
    D, F, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    emb = PREFIX + "embeddings."
    shapes = {emb + "class_embedding": (D,), emb + "patch_embedding.weight": (D, cfg.num_channels, p, p),
              emb + "position_embedding.weight": (cfg.num_patches + 1, D),
              PREFIX + "pre_layrnorm.weight": (D,), PREFIX + "pre_layrnorm.bias": (D,)}
    for i in range(cfg.num_hidden_layers):
        layer = f"{PREFIX}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}self_attn.{name}.weight"], shapes[f"{layer}self_attn.{name}.bias"] = (D, D), (D,)
        shapes.update({layer + "layer_norm1.weight": (D,), layer + "layer_norm1.bias": (D,),
                       layer + "layer_norm2.weight": (D,), layer + "layer_norm2.bias": (D,),
                       layer + "mlp.fc1.weight": (F, D), layer + "mlp.fc1.bias": (F,),
                       layer + "mlp.fc2.weight": (D, F), layer + "mlp.fc2.bias": (D,)})
    shapes.update({PREFIX + "post_layernorm.weight": (D,), PREFIX + "post_layernorm.bias": (D,)})
    return shapes


def patch_embed(pixel_values, weight, linear=linear):  # [B, C, H, W], [D, C, p, p] -> [B, N, D]
    """The stride-p conv as one matmul: cut the image into p x p patches, flatten each like the kernel."""
    B, C, H, W = pixel_values.shape
    D, _, p, _ = weight.shape
    nh, nw = H // p, W // p  # a conv drops the remainder rows/columns too
    x = pixel_values[:, :, :nh * p, :nw * p].reshape(B, C, nh, p, nw, p)
    x = x.transpose(0, 2, 4, 1, 3, 5).reshape(B, nh * nw, C * p * p)
    return linear(x, weight.reshape(D, C * p * p))


def cubic_weights(n_in, n_out):  # -> [n_out, n_in] resampling matrix
    """torch's interpolate(mode="bicubic", align_corners=False) along one axis: Keys' cubic with A = -0.75,
    source x = (dst + 0.5) * n_in / n_out - 0.5 (not clamped), the 4 taps clamped to the border.
    The taps are computed in float32, as torch does, which keeps us within a few float32 ulps of it."""
    f = np.float32
    A, scale = f(-0.75), f(n_in) / f(n_out)
    near = lambda d: ((A + 2) * d - (A + 3)) * d * d + 1  # |d| <= 1
    far = lambda d: ((A * d - 5 * A) * d + 8 * A) * d - 4 * A  # 1 < |d| < 2
    m = np.zeros((n_out, n_in))
    for dst in range(n_out):
        x = scale * (f(dst) + f(0.5)) - f(0.5)
        x0 = math.floor(x)
        t = f(x - f(x0))
        for k, weight in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
            m[dst, min(max(x0 - 1 + k, 0), n_in - 1)] += weight
    return m


def bicubic_resize(grid, height, width):  # [h, w, D] -> [height, width, D]
    h, w, _ = grid.shape
    out = np.einsum("yh,hwd->ywd", cubic_weights(h, height), grid.astype(np.float64))
    return np.einsum("xw,ywd->yxd", cubic_weights(w, width), out).astype(np.float32)


def position_embeddings(pos, cfg, height, width, interpolate):  # [1 + n, D] -> [1 + nh*nw, D]
    """The learned table, bicubic-resized to the image's patch grid when `interpolate` (and it differs)."""
    n = pos.shape[0] - 1
    nh, nw = height // cfg.patch_size, width // cfg.patch_size
    if not interpolate or (nh * nw == n and height == width):
        return pos
    side = int(math.sqrt(n))
    grid = bicubic_resize(pos[1:].reshape(side, side, -1), nh, nw)
    return np.concatenate([pos[:1], grid.reshape(nh * nw, -1)])


def embeddings(emb, cfg, pixel_values, interpolate_pos_encoding, linear=linear):  # [B, C, H, W] -> [B, T, D]
    B, _, H, W = pixel_values.shape
    patches = patch_embed(pixel_values, emb.patch_embedding.weight, linear)  # [B, N, D]
    cls = np.broadcast_to(emb.class_embedding, (B, 1, patches.shape[-1]))
    x = np.concatenate([cls, patches], axis=1)
    return x + position_embeddings(emb.position_embedding.weight, cfg, H, W, interpolate_pos_encoding)


def self_attn(x, params, n_head):  # [B, T, D] -> [B, T, D], probs [B, H, T, T]; params: the layer's self_attn.*
    a, probs = mha(x, None, params.q_proj, params.k_proj, params.v_proj, n_head)
    return linear(a, params.out_proj.weight, params.out_proj.bias), probs


def mlp(x, params, act):  # [B, T, D] -> [B, T, D]; params: the layer's mlp.*
    h = ACTIVATIONS[act](linear(x, params.fc1.weight, params.fc1.bias))  # [B, T, F]
    return linear(h, params.fc2.weight, params.fc2.bias)


def encoder_layer(x, layer, cfg, return_probs=False):  # [B, T, D] -> [B, T, D], probs [B, H, T, T]
    """Pre-LN (AltCLIPEncoderLayer). `layer`: the weights under vision_model.encoder.layers.N."""
    eps, ln1, ln2 = cfg.layer_norm_eps, layer.layer_norm1, layer.layer_norm2
    a, probs = self_attn(layer_norm(x, ln1.weight, ln1.bias, eps), layer.self_attn, cfg.num_attention_heads)
    x = x + a
    x = x + mlp(layer_norm(x, ln2.weight, ln2.bias, eps), layer.mlp, cfg.hidden_act)
    return x, (probs if return_probs else None)


def vision_forward(weights, cfg, pixel_values, ops, interpolate_pos_encoding=False, output_attentions=False,
                   output_hidden_states=False, after_layer=None):
    """The whole vision tower on validated inputs -> (last_hidden [B, T, D], pooled [B, D], hidden, attn).
    `ops`: the reference or its fast mapping (fast.ops()); `after_layer(layer)`: called as each layer is done."""
    check_activation(cfg.hidden_act)
    model, eps = Params(weights).vision_model, cfg.layer_norm_eps
    x = embeddings(model.embeddings, cfg, pixel_values, interpolate_pos_encoding, ops.linear)
    x = ops.layer_norm(x, model.pre_layrnorm.weight, model.pre_layrnorm.bias, eps)
    hidden_states = [x] if output_hidden_states else []  # kept only when asked for: else each x is freed for reuse
    attentions = []
    for i in range(cfg.num_hidden_layers):
        layer = model.encoder.layers[i]
        x, probs = ops.vision_layer(x, layer, cfg, output_attentions)
        if after_layer is not None:
            after_layer(layer)
        if output_hidden_states:
            hidden_states.append(x)
        attentions.append(probs)
    pooled = ops.layer_norm(x[:, 0], model.post_layernorm.weight, model.post_layernorm.bias, eps)
    return (x, pooled, tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None)
