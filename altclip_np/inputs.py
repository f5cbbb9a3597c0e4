"""Checks on what users pass in, each failing with a message that says what was expected."""
import numpy as np


def _array(x, name):
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # a torch tensor, say: take its values
        x = x.numpy()
    try:
        return np.asarray(x)
    except ValueError as e:
        raise ValueError(f"{name} must be a rectangular array ({e})") from None


def int_array(x, name, rank=2):
    a = _array(x, name)
    if a.dtype == bool or a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != rank:
        raise ValueError(f"{name} must have rank {rank} ([batch, sequence]), got shape {a.shape}")
    return a.astype(np.int64, copy=False)


def float_array(x, name, rank):
    a = _array(x, name)
    if a.dtype.kind not in "fiu" or a.dtype == bool:
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    if a.ndim != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {a.shape}")
    return a.astype(np.float32, copy=False)


def check_range(a, high, name, what):
    if a.size and (a.min() < 0 or a.max() >= high):
        raise ValueError(f"{name} must lie in [0, {high}) ({what}); got values in [{a.min()}, {a.max()}]")


def text_inputs(cfg, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
    """Validated text inputs, with the defaults transformers fills in (RoBERTa position ids, zero types)."""
    from .text import position_ids_from_input_ids
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        input_ids = int_array(input_ids, "input_ids")
        check_range(input_ids, cfg.vocab_size, "input_ids", f"the vocabulary has {cfg.vocab_size} tokens")
        shape = input_ids.shape
    else:
        inputs_embeds = float_array(inputs_embeds, "inputs_embeds", 3)
        if inputs_embeds.shape[-1] != cfg.hidden_size:
            raise ValueError(f"inputs_embeds must be [batch, sequence, {cfg.hidden_size}], got {inputs_embeds.shape}")
        shape = inputs_embeds.shape[:2]
    if 0 in shape:
        raise ValueError(f"expected a non-empty [batch, sequence] input, got shape {shape}")
    if attention_mask is not None:
        attention_mask = _array(attention_mask, "attention_mask")
        if attention_mask.shape != shape:
            raise ValueError(f"attention_mask must have the shape of the ids {shape}, got {attention_mask.shape}")
    if position_ids is None:
        if input_ids is not None:
            position_ids = position_ids_from_input_ids(input_ids, cfg.pad_token_id)
        else:
            position_ids = np.arange(cfg.pad_token_id + 1, cfg.pad_token_id + 1 + shape[1])[None]
        if position_ids.max() >= cfg.max_position_embeddings:
            limit = cfg.max_position_embeddings - cfg.pad_token_id - 1
            raise ValueError(f"sequence of {shape[1]} tokens is longer than the model's position table allows "
                             f"({limit} tokens); truncate the input (max_length={limit})")
    else:
        position_ids = int_array(position_ids, "position_ids")
        if position_ids.shape not in (shape, (1, shape[1])):
            raise ValueError(f"position_ids must have shape {shape} or (1, {shape[1]}), got {position_ids.shape}")
        check_range(position_ids, cfg.max_position_embeddings, "position_ids",
                    f"the position table has {cfg.max_position_embeddings} rows")
    if token_type_ids is None:
        token_type_ids = np.zeros(shape, dtype=np.int64)
    else:
        token_type_ids = int_array(token_type_ids, "token_type_ids")
        if token_type_ids.shape != shape:
            raise ValueError(f"token_type_ids must have the shape of the ids {shape}, got {token_type_ids.shape}")
        check_range(token_type_ids, cfg.type_vocab_size, "token_type_ids",
                    f"the model has {cfg.type_vocab_size} token types")
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                position_ids=position_ids, inputs_embeds=inputs_embeds)


def pixel_inputs(cfg, pixel_values, interpolate_pos_encoding):
    if pixel_values is None:
        raise ValueError("pixel_values is required: a float array [batch, channels, height, width]")
    x = float_array(pixel_values, "pixel_values", 4)
    B, C, H, W = x.shape
    if B == 0:
        raise ValueError("pixel_values holds no image (batch size 0)")
    if C != cfg.num_channels:
        raise ValueError(f"pixel_values must be [batch, {cfg.num_channels}, height, width], got {x.shape}")
    if not interpolate_pos_encoding and (H != cfg.image_size or W != cfg.image_size):
        raise ValueError(f"input image size ({H}*{W}) doesn't match the model ({cfg.image_size}*{cfg.image_size}); "
                         "resize it or pass interpolate_pos_encoding=True")
    if H < cfg.patch_size or W < cfg.patch_size:
        raise ValueError(f"image ({H}*{W}) is smaller than one {cfg.patch_size}*{cfg.patch_size} patch")
    return x
