"""AltCLIPProcessor: the XLM-R tokenizer and the CLIP image processor behind one call, as in transformers."""
from pathlib import Path

from .image_processing import PREPROCESSOR_FILE, PROCESSOR_FILE, CLIPImageProcessor
from .encoding import BatchEncoding
from .tokenizer import CONFIG_FILE, VOCAB_FILE, XLMRobertaTokenizer


class AltCLIPProcessor:
    """`processor(text=..., images=...)` -> `input_ids`, `attention_mask` and/or `pixel_values` (NumPy)."""

    def __init__(self, tokenizer, image_processor):
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, cache_dir=None, local_files_only=False):
        """Load from a checkpoint directory (or Hub id) with the tokenizer and preprocessor files."""
        from .hub import resolve_pretrained

        root = resolve_pretrained(name_or_path, [VOCAB_FILE, CONFIG_FILE, PREPROCESSOR_FILE, PROCESSOR_FILE],
                                  revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        root = Path(root)
        return cls(XLMRobertaTokenizer.from_pretrained(root), CLIPImageProcessor.from_pretrained(root))

    def save_pretrained(self, save_directory):
        """Write files that both this class and transformers' `AltCLIPProcessor.from_pretrained` read."""
        out = self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(out)
        return out

    def __call__(self, text=None, images=None, padding=False, truncation=None, max_length=None,
                 return_tensors="np", **kwargs):
        if text is None and images is None:
            raise ValueError("pass text, images or both")
        encoding = BatchEncoding()
        if text is not None:
            encoding.update(self.tokenizer(text, padding=padding, truncation=truncation, max_length=max_length,
                                           return_tensors=return_tensors, **kwargs))
        if images is not None:
            encoding.update(self.image_processor(images, return_tensors=return_tensors))
        return encoding

    def batch_decode(self, sequences, skip_special_tokens=False, **kwargs):
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, ids, skip_special_tokens=False, **kwargs):
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]
