"""Output objects with the fields of transformers' outputs, readable by attribute, by key and by index.

Like transformers' ModelOutput: fields that are None are left out of keys() and of to_tuple(), so
`return_dict=False` gives the same tuple order as transformers.
"""


class ModelOutput(dict):
    fields = ()

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self.fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        super().__init__((k, kwargs[k]) for k in self.fields if kwargs.get(k) is not None)

    def __getattr__(self, name):
        if name in self.fields:
            return self.get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name not in self.fields:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        self[name] = value

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self):
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())

    def __repr__(self):
        shapes = {k: getattr(v, "shape", f"<{type(v).__name__}>") for k, v in self.items()}
        return f"{type(self).__name__}({shapes})"


class BaseModelOutputWithPooling(ModelOutput):
    fields = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")


class BaseModelOutputWithPoolingAndProjection(ModelOutput):
    fields = ("last_hidden_state", "pooler_output", "hidden_states", "attentions", "projection_state")


class AltCLIPOutput(ModelOutput):
    fields = ("loss", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds", "text_model_output",
              "vision_model_output")
