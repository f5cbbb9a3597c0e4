"""Models and inputs to L2-normalised embeddings: what `classify`, `embed` and `search` share."""
import functools
from pathlib import Path

DEFAULT_MODEL = "BAAI/AltCLIP"


class InputError(ValueError):
    """A model, image or text that cannot be used; the message says which and why."""


def one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def model_id(name):
    """How an index records its model: an absolute path for a local directory, else the Hub id."""
    return str(Path(name).resolve()) if Path(name).is_dir() else str(name)


def load_model(name):
    from .model import AltCLIPModel
    from .processor import AltCLIPProcessor
    try:
        return AltCLIPModel.from_pretrained(name), AltCLIPProcessor.from_pretrained(name)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot load model {name!r}: {one_line(e)}") from None


@functools.lru_cache(maxsize=2)
def bulk_model(name):
    """(model, processor), loaded once per process (a Dask worker embeds many shards with one load)."""
    model, processor = load_model(name)
    model.release_weights = False  # many batches: keep the weights mapped in (faster; see AltCLIPModel)
    return model, processor


def text_features(model, processor, texts):  # -> [n, d], L2-normalised
    # RoBERTa positions start after the padding index, so 2 of the position table's rows are never used.
    limit = min(processor.tokenizer.model_max_length, model.config.text_config.max_position_embeddings - 2)
    enc = processor(text=list(texts), padding=True, truncation=True, max_length=limit, return_tensors="np")
    return model.encode_text(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], normalize=True)


def image_features(model, pixel_values):  # -> [n, d], L2-normalised
    return model.encode_image(pixel_values=pixel_values, normalize=True)


def load_pixels(processor, path):
    """One image's pixel_values [3, H, W]; InputError when it cannot be read."""
    if not Path(path).is_file():
        raise InputError(f"no such image file: {path}")
    try:
        return processor(images=[str(path)], return_tensors="np")["pixel_values"][0]
    except (OSError, ValueError) as e:
        message = one_line(e)
        raise InputError(message if str(path) in message else f"cannot read image {path}: {message}") from None
