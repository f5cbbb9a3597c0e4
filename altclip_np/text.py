"""AltCLIP's text tower: XLM-RoBERTa-large (post-LN encoder), then `pre_LN` and the `transformation` Linear.

Reference: transformers/models/altclip/modeling_altclip.py (AltRobertaEmbeddings ... AltCLIPTextModel).
B = batch, T = tokens, C = hidden size, H = heads.
"""
import numpy as np

from .layers import Packing, additive_mask, check_activation, layer_norm, linear, mha
from .weights import release

P = "text_model."  # every key of the text tower starts with this (AltCLIPModel's naming)


def expected_weights(cfg):  # {canonical checkpoint key: shape} for an AltCLIPTextConfig
    C, F = cfg.hidden_size, cfg.intermediate_size
    e = P + "roberta.embeddings."
    shapes = {e + "word_embeddings.weight": (cfg.vocab_size, C),
              e + "position_embeddings.weight": (cfg.max_position_embeddings, C),
              e + "token_type_embeddings.weight": (cfg.type_vocab_size, C),
              e + "LayerNorm.weight": (C,), e + "LayerNorm.bias": (C,)}
    for i in range(cfg.num_hidden_layers):
        l = f"{P}roberta.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[f"{l}attention.self.{name}.weight"], shapes[f"{l}attention.self.{name}.bias"] = (C, C), (C,)
        shapes.update({l + "attention.output.dense.weight": (C, C), l + "attention.output.dense.bias": (C,),
                       l + "attention.output.LayerNorm.weight": (C,), l + "attention.output.LayerNorm.bias": (C,),
                       l + "intermediate.dense.weight": (F, C), l + "intermediate.dense.bias": (F,),
                       l + "output.dense.weight": (C, F), l + "output.dense.bias": (C,),
                       l + "output.LayerNorm.weight": (C,), l + "output.LayerNorm.bias": (C,)})
    shapes.update({P + "pre_LN.weight": (C,), P + "pre_LN.bias": (C,),
                   P + "transformation.weight": (cfg.project_dim, C), P + "transformation.bias": (cfg.project_dim,)})
    return shapes


def position_ids_from_input_ids(input_ids, pad):  # [B, T] -> [B, T]
    """RoBERTa numbering (fairseq's make_positions): pad + 1, pad + 2, ... over real tokens; pads get `pad`."""
    real = (input_ids != pad).astype(np.int64)
    return np.cumsum(real, axis=1) * real + pad


def embeddings_forward(w, cfg, input_ids, inputs_embeds, token_type_ids, position_ids):  # -> [B, T, C]
    e = P + "roberta.embeddings."
    x = w[e + "word_embeddings.weight"][input_ids] if inputs_embeds is None else inputs_embeds
    x = x + w[e + "token_type_embeddings.weight"][token_type_ids]
    x = x + w[e + "position_embeddings.weight"][position_ids]
    return layer_norm(x, w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"], cfg.layer_norm_eps)


def roberta_layer(x, mask, w, l, cfg, return_probs=False, packing=None, first_only=False):  # [B, T, C] -> same
    """Post-LN: x = LN(x + attn(x)); x = LN(x + ffn(x)). `l` is the layer's key prefix.
    With `packing`, x is the packed rows [n, C]; with `first_only`, only token 0's row is computed: [B, 1, C]."""
    eps = cfg.layer_norm_eps
    s = l + "attention.self."
    xq = (x[:, 0] if packing is None else packing.first(x))[:, None] if first_only else None
    a, probs = mha(x, mask, *[(w[f"{s}{n}.weight"], w[f"{s}{n}.bias"]) for n in ("query", "key", "value")],
                   cfg.num_attention_heads, return_probs, packing, xq)
    x = x if xq is None else xq
    o = l + "attention.output."
    x = layer_norm(linear(a, w[o + "dense.weight"], w[o + "dense.bias"], residual=x),
                   w[o + "LayerNorm.weight"], w[o + "LayerNorm.bias"], eps)
    h = linear(x, w[l + "intermediate.dense.weight"], w[l + "intermediate.dense.bias"], act=cfg.hidden_act)
    o = l + "output."
    x = layer_norm(linear(h, w[o + "dense.weight"], w[o + "dense.bias"], residual=x),
                   w[o + "LayerNorm.weight"], w[o + "LayerNorm.bias"], eps)
    return x, probs


def rows_to_compute(attention_mask):  # [B, T] -> [B, T] bool
    """The real tokens, and token 0 (the pooled one) even when it is padding. A row with no real token keeps
    all of its tokens: it attends to every key evenly (all are masked), padding's values included."""
    real = np.asarray(attention_mask).astype(bool)
    keep = real.copy()
    keep[:, 0] = True
    keep[~real.any(axis=1)] = True
    return keep


def text_forward(w, cfg, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, output_attentions=False, output_hidden_states=False,
                 release_weights=False, pooled_only=False):
    """The whole text tower on validated inputs. Returns (projected [B, T, D], hidden_states, attentions).
    pooled_only: only token 0's projection, [B, 1, D], the same numbers for less work (no hidden states or
    attentions): padding tokens, which no token attends to, are left out of every layer, and the last layer
    computes token 0's row only."""
    check_activation(cfg.hidden_act)
    x = embeddings_forward(w, cfg, input_ids, inputs_embeds, token_type_ids, position_ids)
    mask = None if attention_mask is None or attention_mask.all() else additive_mask(attention_mask)
    packing = None
    if pooled_only and mask is not None:
        keep = rows_to_compute(attention_mask)
        packing = None if keep.all() else Packing(keep)
        x = x if packing is None else packing.pack(x)
    hidden_states = [x] if output_hidden_states else []  # kept only when asked for: else each x is freed for reuse
    attentions = []
    for i in range(cfg.num_hidden_layers):
        layer = f"{P}roberta.encoder.layer.{i}."
        last = pooled_only and i == cfg.num_hidden_layers - 1
        x, probs = roberta_layer(x, mask, w, layer, cfg, output_attentions, packing, first_only=last)
        if release_weights:  # keep only ~one layer of the memory-mapped weights resident
            release([a for key, a in w.items() if key.startswith(layer)])
        if output_hidden_states:
            hidden_states.append(x)
        attentions.append(probs)
    x = layer_norm(x, w[P + "pre_LN.weight"], w[P + "pre_LN.bias"], cfg.layer_norm_eps)
    projected = linear(x, w[P + "transformation.weight"], w[P + "transformation.bias"])
    return (projected, tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None)
