"""AltCLIP configs: same field names and defaults as transformers' AltCLIP{Text,Vision,}Config.

Built from keyword arguments, nested dicts or a checkpoint's config.json. Keys a config does not know (the
official BAAI/AltCLIP file carries `num_layers`, `direct_kd`, `pooler_fn`, generic HF keys...) are ignored.
"""
import json
from pathlib import Path


MAX_LAYERS = 1024  # BAAI/AltCLIP has 24 + 24


class _Config:
    model_type = ""
    defaults = {}
    positive_ints = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")

    def __init__(self, **kwargs):
        for key, default in self.defaults.items():
            setattr(self, key, kwargs.get(key, default))
        self._validate()

    def _validate(self):
        for key in self.positive_ints:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}.{key} must be a positive integer, got {str(value)[:50]}")
        if self.num_hidden_layers > MAX_LAYERS:  # the key list of the weights grows with it
            raise ValueError(f"{type(self).__name__}.num_hidden_layers is {self.num_hidden_layers}, more than {MAX_LAYERS}")
        eps = self.layer_norm_eps
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps < 1:
            raise ValueError(f"{type(self).__name__}.layer_norm_eps must be a number in [0, 1), got {str(eps)[:50]}")
        if not isinstance(self.hidden_act, str):
            raise ValueError(f"{type(self).__name__}.hidden_act must be a string, got {str(self.hidden_act)[:50]}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{type(self).__name__}: hidden_size ({self.hidden_size}) is not a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
        return cls(**d)

    def to_dict(self):
        return {"model_type": self.model_type, **{k: getattr(self, k) for k in self.defaults}}

    @classmethod
    def from_pretrained(cls, directory):  # a checkpoint directory's config.json
        return read_config(cls, Path(directory) / "config.json")

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"{type(self).__name__}({json.dumps(self.to_dict(), indent=2, ensure_ascii=False)})"


class AltCLIPTextConfig(_Config):
    """XLM-RoBERTa-large text tower (+ pre_LN and the `transformation` to `project_dim`)."""
    model_type = "altclip_text_model"
    defaults = dict(vocab_size=250002, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, max_position_embeddings=514, hidden_act="gelu", layer_norm_eps=1e-5,
                    initializer_range=0.02, initializer_factor=0.02, pad_token_id=1, bos_token_id=0,
                    eos_token_id=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0, type_vocab_size=1,
                    project_dim=768)
    positive_ints = _Config.positive_ints + ("vocab_size", "max_position_embeddings", "type_vocab_size", "project_dim")


class AltCLIPVisionConfig(_Config):
    """CLIP ViT vision tower."""
    model_type = "altclip_vision_model"
    defaults = dict(hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
                    num_attention_heads=12, num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5, attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0)
    positive_ints = _Config.positive_ints + ("projection_dim",)

    def _validate(self):
        super()._validate()
        for key in ("image_size", "patch_size", "num_channels"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
                setattr(self, key, value := value[0])  # [224, 224] -> 224: AltCLIP images are square
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AltCLIPVisionConfig.{key} must be a positive integer, got {value!r}")

    @property
    def num_patches(self):
        return (self.image_size // self.patch_size) ** 2


def _sub_config(cls, value, legacy):
    """A tower config from `text_config`/`vision_config` and the legacy `*_config_dict` (which wins, as in
    transformers: the full dict it builds, defaults included, overrides the other)."""
    if isinstance(value, cls):
        value = value.to_dict()
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"expected a dict or {cls.__name__} for the {cls.model_type} config, got {type(value).__name__}")
    merged = dict(value or {})
    if legacy is not None:
        merged.update(cls.from_dict(legacy).to_dict())
    return cls.from_dict(merged)


class AltCLIPConfig:
    """The joint model: a text config, a vision config and the shared projection."""
    model_type = "altclip"

    def __init__(self, text_config=None, vision_config=None, projection_dim=768, logit_scale_init_value=2.6592,
                 initializer_factor=1.0, text_config_dict=None, vision_config_dict=None, **unused):
        self.text_config = _sub_config(AltCLIPTextConfig, text_config, text_config_dict)
        self.vision_config = _sub_config(AltCLIPVisionConfig, vision_config, vision_config_dict)
        if not isinstance(projection_dim, int) or isinstance(projection_dim, bool) or projection_dim < 1:
            raise ValueError(f"AltCLIPConfig.projection_dim must be a positive integer, got {str(projection_dim)[:50]}")
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.initializer_factor = initializer_factor

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise TypeError(f"AltCLIPConfig.from_dict expects a dict, got {type(d).__name__}")
        return cls(**d)

    @classmethod
    def from_pretrained(cls, directory):  # a checkpoint directory's config.json
        return read_config(cls, Path(directory) / "config.json")

    def to_dict(self):
        return {"model_type": self.model_type, "text_config": self.text_config.to_dict(),
                "vision_config": self.vision_config.to_dict(), "projection_dim": self.projection_dim,
                "logit_scale_init_value": self.logit_scale_init_value, "initializer_factor": self.initializer_factor}

    __eq__ = _Config.__eq__
    __repr__ = _Config.__repr__


MAX_JSON_BYTES = 16 << 20  # config / processor / tokenizer JSON files are a few KB


def read_json(path):
    """A JSON object from a small config file; OSError (naming the file) for anything else."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise OSError(f"{path}: {path.stat().st_size} bytes is too large for a config file")
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise OSError(f"{path} is not valid JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(d, dict):
        raise OSError(f"{path}: expected a JSON object")
    return d


def read_config(cls, path):
    """A tower or joint config from a config.json. A tower config may also be read out of a full AltCLIP config."""
    try:
        d = read_json(path)
    except FileNotFoundError:
        raise OSError(f"no config.json in {Path(path).parent}") from None
    model_type = d.get("model_type")
    if model_type not in (None, "altclip", "altclip_text_model", "altclip_vision_model"):
        raise OSError(f"{path} is a {model_type!r} config, not an AltCLIP one (model_type 'altclip')")
    if cls is AltCLIPConfig:
        if model_type not in (None, "altclip"):
            raise OSError(f"{path} is a {model_type!r} config: AltCLIPModel needs a full 'altclip' config")
        return AltCLIPConfig.from_dict(d)
    if model_type == "altclip":  # a tower inside a full checkpoint
        return getattr(AltCLIPConfig.from_dict(d), "text_config" if cls is AltCLIPTextConfig else "vision_config")
    if model_type is not None and model_type != cls.model_type:
        raise OSError(f"{path} is a {model_type!r} config, expected {cls.model_type!r}")
    return cls.from_dict(d)
