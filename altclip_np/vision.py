"""AltCLIP's vision tower: CLIP ViT (patch conv, class token, positions, pre-LN encoder, post-LN on [CLS]).

Reference: transformers/models/altclip/modeling_altclip.py (AltCLIPVisionEmbeddings ... AltCLIPVisionModel).
B = batch, N = patches, T = N + 1 tokens, D = hidden size, p = patch size.
"""
import math

import numpy as np

from .layers import check_activation, layer_norm, linear, mha
from .weights import release

P = "vision_model."


def expected_weights(cfg):  # {canonical checkpoint key: shape} for an AltCLIPVisionConfig
    D, F, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    e = P + "embeddings."
    shapes = {e + "class_embedding": (D,), e + "patch_embedding.weight": (D, cfg.num_channels, p, p),
              e + "position_embedding.weight": (cfg.num_patches + 1, D),
              P + "pre_layrnorm.weight": (D,), P + "pre_layrnorm.bias": (D,)}
    for i in range(cfg.num_hidden_layers):
        l = f"{P}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{l}self_attn.{name}.weight"], shapes[f"{l}self_attn.{name}.bias"] = (D, D), (D,)
        shapes.update({l + "layer_norm1.weight": (D,), l + "layer_norm1.bias": (D,),
                       l + "layer_norm2.weight": (D,), l + "layer_norm2.bias": (D,),
                       l + "mlp.fc1.weight": (F, D), l + "mlp.fc1.bias": (F,),
                       l + "mlp.fc2.weight": (D, F), l + "mlp.fc2.bias": (D,)})
    shapes.update({P + "post_layernorm.weight": (D,), P + "post_layernorm.bias": (D,)})
    return shapes


def patch_embed(pixel_values, w):  # [B, C, H, W], [D, C, p, p] -> [B, N, D]
    """The stride-p conv as one matmul: cut the image into p x p patches, flatten each like the kernel."""
    B, C, H, W = pixel_values.shape
    D, _, p, _ = w.shape
    nh, nw = H // p, W // p  # a conv drops the remainder rows/columns too
    x = pixel_values[:, :, :nh * p, :nw * p].reshape(B, C, nh, p, nw, p)
    x = x.transpose(0, 2, 4, 1, 3, 5).reshape(B, nh * nw, C * p * p)
    return linear(x, w.reshape(D, C * p * p))


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


def embeddings_forward(w, cfg, pixel_values, interpolate_pos_encoding):  # [B, C, H, W] -> [B, T, D]
    e = P + "embeddings."
    B, _, H, W = pixel_values.shape
    patches = patch_embed(pixel_values, w[e + "patch_embedding.weight"])
    cls = np.broadcast_to(w[e + "class_embedding"], (B, 1, patches.shape[-1]))
    x = np.concatenate([cls, patches], axis=1)
    return x + position_embeddings(w[e + "position_embedding.weight"], cfg, H, W, interpolate_pos_encoding)


def encoder_layer(x, w, l, cfg, return_probs=False, first_only=False):  # [B, T, D] -> [B, T, D], probs
    """Pre-LN: x = x + attn(LN(x)); x = x + mlp(LN(x)). `l` is the layer's key prefix.
    With `first_only`, only the class token's row is computed: [B, 1, D]."""
    eps, s = cfg.layer_norm_eps, l + "self_attn."
    h = layer_norm(x, w[l + "layer_norm1.weight"], w[l + "layer_norm1.bias"], eps)
    a, probs = mha(h, None, *[(w[f"{s}{n}.weight"], w[f"{s}{n}.bias"]) for n in ("q_proj", "k_proj", "v_proj")],
                   cfg.num_attention_heads, return_probs, xq=h[:, :1] if first_only else None)
    x = linear(a, w[s + "out_proj.weight"], w[s + "out_proj.bias"], residual=x[:, :1] if first_only else x)
    h = layer_norm(x, w[l + "layer_norm2.weight"], w[l + "layer_norm2.bias"], eps)
    h = linear(h, w[l + "mlp.fc1.weight"], w[l + "mlp.fc1.bias"], act=cfg.hidden_act)
    return linear(h, w[l + "mlp.fc2.weight"], w[l + "mlp.fc2.bias"], residual=x), probs


def vision_forward(w, cfg, pixel_values, interpolate_pos_encoding=False, output_attentions=False,
                   output_hidden_states=False, release_weights=False, pooled_only=False):
    """The whole vision tower on validated inputs. Returns (last_hidden [B, T, D], pooled [B, D], hidden, attn).
    pooled_only: the last layer computes the class token's row only (last_hidden is [B, 1, D]): the same pooled
    output for less work."""
    check_activation(cfg.hidden_act)
    x = embeddings_forward(w, cfg, pixel_values, interpolate_pos_encoding)
    x = layer_norm(x, w[P + "pre_layrnorm.weight"], w[P + "pre_layrnorm.bias"], cfg.layer_norm_eps)
    hidden_states = [x] if output_hidden_states else []  # kept only when asked for: else each x is freed for reuse
    attentions = []
    for i in range(cfg.num_hidden_layers):
        layer = f"{P}encoder.layers.{i}."
        last = pooled_only and i == cfg.num_hidden_layers - 1
        x, probs = encoder_layer(x, w, layer, cfg, output_attentions, first_only=last)
        if release_weights:  # keep only ~one layer of the memory-mapped weights resident
            release([a for key, a in w.items() if key.startswith(layer)])
        if output_hidden_states:
            hidden_states.append(x)
        attentions.append(probs)
    pooled = layer_norm(x[:, 0], w[P + "post_layernorm.weight"], w[P + "post_layernorm.bias"], cfg.layer_norm_eps)
    return (x, pooled, tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None)
