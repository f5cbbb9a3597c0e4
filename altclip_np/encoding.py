"""What the tokenizer, the image processor and the processor hand back: model inputs by name."""


class BatchEncoding(dict):
    """A dict of model inputs whose keys can also be read as attributes (`enc.input_ids`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None
