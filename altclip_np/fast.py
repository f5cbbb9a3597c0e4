"""The reference mapped onto the Numba kernels, and the one place that chooses between them.

`ops()` is asked once per call path (a forward, get_*_features, encode_*): under the `numpy` backend it gives
`REFERENCE`, the plain functions of layers.py, vision.py and text.py; under `numba` and `auto` a `Fast`, whose
methods compute the same maths as the reference function they are named after, on the kernels of
`altclip_np.kernels`, with these fusions:
  - a Linear's bias, activation (gelu, quick_gelu) and residual run in the GEMM's epilogue (the Numba GEMM) or
    in one pass after it (OpenBLAS): `x = x + linear(h)` of the reference is `linear(h, residual=x)` here;
  - LayerNorm, and attention's scale + mask + softmax, are single parallel passes; attention is one fused
    kernel (never the [B, H, T, T] scores) where it was measured faster;
  - the embedding-only path (`encode_text`, `encode_image`: only the pooled token's output is wanted) leaves
    the padding rows out of every layer (`Packing`) and lets the last layer compute the pooled row only
    (`pooled_only`); the reference computes everything and takes that row.
Which GEMM and which attention: `numba` always the Numba kernels; `auto` what autotune.py measured on this
machine, per class of GEMM rows and of sequence length. The Numba GEMM reads a weight packed once into its
panels (model.weight_panels); a weight that has none (the patch embedding's, reshaped from its conv, or every
one when the panel store is off) is packed on every call: slower, the same bits (a row's result still does not
depend on its batch, which OpenBLAS's would).
"""
from types import SimpleNamespace

import numpy as np

from . import backend, text, vision
from .layers import ACTIVATIONS, Params, additive_mask, check_activation, layer_norm, linear, merge_heads, split_heads


def ops(panels=None):
    """The functions the current backend runs: REFERENCE, or a Fast for `numba` / `auto`. `panels`: a callable
    giving {id(weight): (weight, its panels)}, the model's weights packed for the Numba GEMM (model.py)."""
    name = backend.get_backend()
    return REFERENCE if name == "numpy" else Fast(name, panels() if panels is not None else {})


def reference_encode_image(weights, cfg, pixel_values, interpolate_pos_encoding=False, after_layer=None):
    """The pooled (post-LayerNorm class token) output [B, D] of the whole vision tower."""
    return vision.vision_forward(weights, cfg, pixel_values, REFERENCE, interpolate_pos_encoding,
                                 after_layer=after_layer)[1]


def reference_encode_text(weights, cfg, after_layer=None, **inputs):
    """Token 0's projection [B, D] of the whole text tower."""
    return text.text_forward(weights, cfg, REFERENCE, **inputs, after_layer=after_layer)[0][:, 0]


REFERENCE = SimpleNamespace(name="numpy", linear=linear, layer_norm=layer_norm, vision_layer=vision.encoder_layer,
                            text_layer=text.roberta_layer, encode_image=reference_encode_image,
                            encode_text=reference_encode_text)


class Packing:
    """The rows of a [B, T, C] batch worth computing, packed as [n, C]: padding tokens are never attended to,
    so a forward that only returns real tokens' outputs can leave them out of every GEMM."""

    def __init__(self, keep):  # [B, T] bool
        self.shape, self.rows = keep.shape, np.flatnonzero(keep)
        self.firsts = np.searchsorted(self.rows, np.arange(keep.shape[0]) * keep.shape[1])  # token 0's row

    def pack(self, x):  # [B, T, C] -> [n, C]
        return x.reshape(-1, x.shape[-1])[self.rows]

    def unpack(self, x):  # [n, C] -> [B, T, C], zeros in the left-out rows
        out = np.zeros((self.shape[0] * self.shape[1], x.shape[-1]), x.dtype)
        out[self.rows] = x
        return out.reshape(self.shape + (x.shape[-1],))

    def first(self, x):  # [n, C] -> [B, C]: each sequence's token 0 (kept)
        return x[self.firsts]


def rows_to_compute(attention_mask):  # [B, T] -> [B, T] bool
    """The real tokens, and token 0 (the pooled one) even when it is padding. A row with no real token keeps
    all of its tokens: it attends to every key evenly (all are masked), padding's values included."""
    real = np.asarray(attention_mask).astype(bool)
    keep = real.copy()
    keep[:, 0] = True
    keep[~real.any(axis=1)] = True
    return keep


class Fast:
    """The reference on the Numba kernels (the `numba` or `auto` backend)."""

    def __init__(self, name, panels):
        from . import kernels
        self.name, self.kernels, self.panels = name, kernels, panels
        self.act_codes = {None: kernels.ACT_NONE, "gelu": kernels.ACT_GELU, "quick_gelu": kernels.ACT_QUICK_GELU}
        self.hidden = None  # fc1's output, the same memory for every layer of this call (mlp_buffer)

    def gemm_on_numba(self, rows):  # the Numba GEMM (True) or OpenBLAS for a Linear over `rows` rows
        if self.name == "auto":
            from . import autotune
            return autotune.gemm_on_numba(rows)
        return True

    def matmul(self, x, weight, out=None, **epilogue):  # [M, in] x [out, in] -> [M, out] on the Numba GEMM
        entry = self.panels.get(id(weight))
        if entry is not None and entry[0] is weight:  # (the array itself, not one that reuses its id)
            return self.kernels.matmul_panels(x, entry[1], weight.shape[0], out, **epilogue)
        return self.kernels.matmul_nt(x, weight, out, **epilogue)

    def mlp_buffer(self, x, width):  # [..., C] -> an uninitialised [rows of x, width] float32 array
        """Where the MLP's first Linear (mlp.fc1, intermediate.dense) writes: the same memory for every layer of
        this call, since the second one has read it before the next layer's first runs. Allocated anew per
        layer, the 2056 x 4096 floats of eight images (33.7 MB, the command's default batch) are over glibc's
        largest mmap threshold (32 MiB): a fresh mapping every time, its pages faulted in and zeroed again.
        Eight images, one forward (Zen 4): 13,000 page faults and 0.27 s of system time -> 600 and 0.01 s,
        3% less wall time (also 32 texts of 77 tokens)."""
        rows = int(np.prod(x.shape[:-1]))
        if self.hidden is None or self.hidden.shape[0] < rows or self.hidden.shape[1] != width:
            self.hidden = np.empty((rows, width), np.float32)
        return self.hidden[:rows].reshape(x.shape[:-1] + (width,))

    def attention_on_numba(self, tokens):  # the fused attention kernel (True) or BLAS + the softmax kernel
        if self.name == "auto":
            from . import autotune
            return autotune.attention_on_numba(tokens)
        return True

    # ---- layers.py ----

    def layer_norm(self, x, weight, bias, eps):  # layers.layer_norm
        return self.kernels.layer_norm(x, weight, bias, eps)

    def linear(self, x, weight, bias=None, act=None, residual=None, out=None):  # [..., in] -> [..., out]
        """act(linear(x)) + residual: one [M, in] x [in, out] GEMM (a 3-D `x @ w.T` would run one small GEMM per
        batch row), then the bias, the activation `act` (a name, or None) and the `residual` [..., out]: in one
        pass, inside the GEMM when it is the Numba one. `out`: a C-contiguous [..., out] array to write into."""
        k = self.kernels
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        r2 = None if residual is None else residual.reshape(x2.shape[0], weight.shape[0])
        o2 = None if out is None else out.reshape(x2.shape[0], weight.shape[0])
        on_numba = self.gemm_on_numba(x2.shape[0])
        if act in self.act_codes:
            code = self.act_codes[act]
            if on_numba:
                y = self.matmul(x2, weight, o2, bias=bias, act=code, residual=r2)
            else:
                y = k.bias_act_residual_(np.matmul(x2, weight.T, out=o2), bias, code, r2)
        else:  # an activation the kernels do not have: the reference's, after the GEMM
            y = self.matmul(x2, weight, o2) if on_numba else np.matmul(x2, weight.T, out=o2)  # [M, out]
            if bias is not None:
                y += bias
            y = ACTIVATIONS[act](y)
            if r2 is not None:
                y += r2
        return y.reshape(lead + (weight.shape[0],))

    def attention(self, q, k, v, mask, scale, return_probs=False):  # layers.attention; probs only if asked
        if self.attention_on_numba(k.shape[2]):
            return self.kernels.attention(q, k, v, mask, scale, return_probs)
        scores = q @ k.transpose(0, 1, 3, 2)  # [B, H, Tq, Tk] on OpenBLAS
        probs = self.kernels.softmax(scores, scale, mask, out=scores)  # scale, mask and softmax in one pass
        return probs @ v, (probs if return_probs else None)

    def mha(self, x, mask, query, key, value, n_head, return_probs=False, packing=None, pooled=None):
        """layers.mha. With `packing`, x (and the output) hold only the packed rows [n, C] of the batch. With
        `pooled` [B, 1, C] (the pooled token's rows), only these are queries and the output is [B, 1, C];
        every row of x still gives a key and a value."""
        batched = packing.unpack if packing is not None else (lambda y: y)  # attention runs on [B, H, T, D]
        keys, values = (split_heads(batched(self.linear(x, p.weight, p.bias)), n_head) for p in (key, value))
        queries = batched(self.linear(x, query.weight, query.bias)) if pooled is None else \
            self.linear(pooled, query.weight, query.bias)
        out, probs = self.attention(split_heads(queries, n_head), keys, values, mask,
                                    (x.shape[-1] // n_head) ** -0.5, return_probs)
        out = merge_heads(out)
        return (packing.pack(out) if packing is not None and pooled is None else out), probs

    # ---- vision.py, text.py ----

    def vision_layer(self, x, layer, cfg, return_probs=False, pooled_only=False):  # vision.encoder_layer
        """With `pooled_only`, only the class token's row is computed: [B, 1, D]."""
        eps, ln1, ln2, attn = cfg.layer_norm_eps, layer.layer_norm1, layer.layer_norm2, layer.self_attn
        h = self.layer_norm(x, ln1.weight, ln1.bias, eps)
        a, probs = self.mha(h, None, attn.q_proj, attn.k_proj, attn.v_proj, cfg.num_attention_heads, return_probs,
                            pooled=h[:, :1] if pooled_only else None)
        x = self.linear(a, attn.out_proj.weight, attn.out_proj.bias, residual=x[:, :1] if pooled_only else x)
        h = self.layer_norm(x, ln2.weight, ln2.bias, eps)
        fc1 = layer.mlp.fc1
        h = self.linear(h, fc1.weight, fc1.bias, act=cfg.hidden_act, out=self.mlp_buffer(h, fc1.weight.shape[0]))
        return self.linear(h, layer.mlp.fc2.weight, layer.mlp.fc2.bias, residual=x), probs

    def text_layer(self, x, mask, layer, cfg, return_probs=False, packing=None, pooled_only=False):
        """text.roberta_layer. With `packing`, x is the packed rows [n, C]; with `pooled_only`, only token 0's
        row is computed: [B, 1, C]."""
        eps, attn = cfg.layer_norm_eps, layer.attention
        pooled = (x[:, 0] if packing is None else packing.first(x))[:, None] if pooled_only else None
        a, probs = self.mha(x, mask, attn.self.query, attn.self.key, attn.self.value, cfg.num_attention_heads,
                            return_probs, packing, pooled)
        x = x if pooled is None else pooled
        out = attn.output
        x = self.layer_norm(self.linear(a, out.dense.weight, out.dense.bias, residual=x),
                            out.LayerNorm.weight, out.LayerNorm.bias, eps)
        inter = layer.intermediate.dense
        h = self.linear(x, inter.weight, inter.bias, act=cfg.hidden_act, out=self.mlp_buffer(x, inter.weight.shape[0]))
        out = layer.output
        return self.layer_norm(self.linear(h, out.dense.weight, out.dense.bias, residual=x),
                               out.LayerNorm.weight, out.LayerNorm.bias, eps), probs

    # ---- the embedding-only path ----

    def encode_image(self, weights, cfg, pixel_values, interpolate_pos_encoding=False, after_layer=None):
        """reference_encode_image: the last layer computes the class token's row only."""
        check_activation(cfg.hidden_act)
        model, eps = Params(weights).vision_model, cfg.layer_norm_eps
        x = vision.embeddings(model.embeddings, cfg, pixel_values, interpolate_pos_encoding, self.linear)
        x = self.layer_norm(x, model.pre_layrnorm.weight, model.pre_layrnorm.bias, eps)
        for i in range(cfg.num_hidden_layers):
            layer = model.encoder.layers[i]
            x, _ = self.vision_layer(x, layer, cfg, pooled_only=i == cfg.num_hidden_layers - 1)
            if after_layer is not None:
                after_layer(layer)
        return self.layer_norm(x[:, 0], model.post_layernorm.weight, model.post_layernorm.bias, eps)

    def encode_text(self, weights, cfg, input_ids=None, attention_mask=None, token_type_ids=None,
                    position_ids=None, inputs_embeds=None, after_layer=None):
        """reference_encode_text: padding tokens, which no token attends to, are left out of every layer, and
        the last layer computes token 0's row only."""
        check_activation(cfg.hidden_act)
        model, eps = Params(weights).text_model, cfg.layer_norm_eps
        x = text.embeddings(model.roberta.embeddings, cfg, input_ids, inputs_embeds, token_type_ids, position_ids,
                            self.layer_norm)
        mask = None if attention_mask is None or attention_mask.all() else additive_mask(attention_mask)
        packing = None
        if mask is not None:
            keep = rows_to_compute(attention_mask)
            packing = None if keep.all() else Packing(keep)
            x = x if packing is None else packing.pack(x)
        for i in range(cfg.num_hidden_layers):
            layer = model.roberta.encoder.layer[i]
            x, _ = self.text_layer(x, mask, layer, cfg, packing=packing, pooled_only=i == cfg.num_hidden_layers - 1)
            if after_layer is not None:
                after_layer(layer)
        x = self.layer_norm(x[:, 0], model.pre_LN.weight, model.pre_LN.bias, eps)
        return self.linear(x, model.transformation.weight, model.transformation.bias)
