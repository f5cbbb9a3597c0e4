"""AltCLIP's text tower: XLM-RoBERTa-large (post-LN encoder), then `pre_LN` and the `transformation` Linear.

Reference: transformers/models/altclip/modeling_altclip.py (AltRobertaEmbeddings ... AltCLIPTextModel).
B = batch, T = tokens, C = hidden size, H = heads.
"""
import numpy as np

from .layers import ACTIVATIONS, Params, additive_mask, check_activation, layer_norm, linear, mha

PREFIX = "text_model."  # every key of the text tower starts with this (AltCLIPModel's naming)


def expected_weights(cfg):  # {canonical checkpoint key: shape} for an AltCLIPTextConfig
    C, F = cfg.hidden_size, cfg.intermediate_size
    emb = PREFIX + "roberta.embeddings."
    shapes = {emb + "word_embeddings.weight": (cfg.vocab_size, C),
              emb + "position_embeddings.weight": (cfg.max_position_embeddings, C),
              emb + "token_type_embeddings.weight": (cfg.type_vocab_size, C),
              emb + "LayerNorm.weight": (C,), emb + "LayerNorm.bias": (C,)}
    for i in range(cfg.num_hidden_layers):
        layer = f"{PREFIX}roberta.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[f"{layer}attention.self.{name}.weight"] = (C, C)
            shapes[f"{layer}attention.self.{name}.bias"] = (C,)
        for name, n_out, n_in, norm in (("attention.output", C, C, True), ("intermediate", F, C, False),
                                         ("output", C, F, True)):
            shapes[f"{layer}{name}.dense.weight"], shapes[f"{layer}{name}.dense.bias"] = (n_out, n_in), (n_out,)
            if norm:  # post-LN: each residual sum is normalised
                shapes[f"{layer}{name}.LayerNorm.weight"] = shapes[f"{layer}{name}.LayerNorm.bias"] = (C,)
    shapes.update({PREFIX + "pre_LN.weight": (C,), PREFIX + "pre_LN.bias": (C,),
                   PREFIX + "transformation.weight": (cfg.project_dim, C),
                   PREFIX + "transformation.bias": (cfg.project_dim,)})
    return shapes


def position_ids_from_input_ids(input_ids, pad):  # [B, T] -> [B, T]
    """RoBERTa numbering (fairseq's make_positions): pad + 1, pad + 2, ... over real tokens; pads get `pad`."""
    real = (input_ids != pad).astype(np.int64)
    return np.cumsum(real, axis=1) * real + pad


def embeddings(emb, cfg, input_ids, inputs_embeds, token_type_ids, position_ids, layer_norm=layer_norm):
    """Word + token type + position embeddings, then LayerNorm. -> [B, T, C]"""
    x = emb.word_embeddings.weight[input_ids] if inputs_embeds is None else inputs_embeds
    x = x + emb.token_type_embeddings.weight[token_type_ids]
    x = x + emb.position_embeddings.weight[position_ids]
    return layer_norm(x, emb.LayerNorm.weight, emb.LayerNorm.bias, cfg.layer_norm_eps)


def roberta_layer(x, mask, layer, cfg, return_probs=False):  # [B, T, C] -> [B, T, C], probs [B, H, T, T]
    """Post-LN (XLMRobertaLayer). `layer`: the weights under text_model.roberta.encoder.layer.N."""
    eps, attn = cfg.layer_norm_eps, layer.attention
    a, probs = mha(x, mask, attn.self.query, attn.self.key, attn.self.value, cfg.num_attention_heads)
    out = attn.output
    x = layer_norm(x + linear(a, out.dense.weight, out.dense.bias), out.LayerNorm.weight, out.LayerNorm.bias, eps)
    h = ACTIVATIONS[cfg.hidden_act](linear(x, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
    out = layer.output
    x = layer_norm(x + linear(h, out.dense.weight, out.dense.bias), out.LayerNorm.weight, out.LayerNorm.bias, eps)
    return x, (probs if return_probs else None)


def text_forward(weights, cfg, ops, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, output_attentions=False, output_hidden_states=False, after_layer=None):
    """The whole text tower on validated inputs -> (projected [B, T, D], hidden_states, attentions).
    `ops`: the reference or its fast mapping (fast.ops()); `after_layer(layer)`: called as each layer is done."""
    check_activation(cfg.hidden_act)
    model, eps = Params(weights).text_model, cfg.layer_norm_eps
    x = embeddings(model.roberta.embeddings, cfg, input_ids, inputs_embeds, token_type_ids, position_ids,
                   ops.layer_norm)
    mask = None if attention_mask is None or attention_mask.all() else additive_mask(attention_mask)
    hidden_states = [x] if output_hidden_states else []  # kept only when asked for: else each x is freed for reuse
    attentions = []
    for i in range(cfg.num_hidden_layers):
        layer = model.roberta.encoder.layer[i]
        x, probs = ops.text_layer(x, mask, layer, cfg, output_attentions)
        if after_layer is not None:
            after_layer(layer)
        if output_hidden_states:
            hidden_states.append(x)
        attentions.append(probs)
    x = ops.layer_norm(x, model.pre_LN.weight, model.pre_LN.bias, eps)
    projected = ops.linear(x, model.transformation.weight, model.transformation.bias)
    return (projected, tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None)
