"""The public models, mirroring transformers' API with NumPy arrays in and out:
AltCLIPTextModel, AltCLIPVisionModel and the joint AltCLIPModel."""
import numpy as np

from . import fast, panels, runtime, text, vision
from .config import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig, read_config
from .hub import resolve_weights
from .inputs import pixel_inputs, text_inputs
from .outputs import AltCLIPOutput, BaseModelOutputWithPooling, BaseModelOutputWithPoolingAndProjection
from .weights import TensorSource, Weights, load_weights, open_checkpoint, release


class PreTrainedModel:
    config_class = None

    def __init__(self, config, weights, release_weights=True):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs an {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.weights = weights if isinstance(weights, Weights) else Weights(weights)  # {checkpoint key: array}
        # Hand each encoder layer's memory-mapped pages back to the OS page cache once it has run: the process
        # keeps ~one layer resident (0.25 GiB for a whole BAAI/AltCLIP forward instead of 2.5), at the cost of
        # re-mapping them on the next call (~8% slower in a loop). Set False for bulk work.
        self.release_weights = release_weights

    @classmethod
    def expected_weights(cls, config):
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls, config, state_dict):
        """Build from an in-memory {checkpoint key: array} (any of transformers' key spellings)."""
        return cls(config, load_weights(TensorSource.from_arrays(state_dict), cls.expected_weights(config),
                                        "state_dict"))

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, cache_dir=None, local_files_only=False,
                        release_weights=True):
        """Load a checkpoint directory or Hub repo id (config.json + model.safetensors or pytorch_model.bin)."""
        directory, kind, weights_file = resolve_weights(name_or_path, revision=revision, cache_dir=cache_dir,
                                                        local_files_only=local_files_only)
        config = read_config(cls.config_class, directory / "config.json")
        source = open_checkpoint(kind, weights_file)
        return cls(config, load_weights(source, cls.expected_weights(config), str(weights_file)), release_weights)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _ops(self):  # fast.ops() with this model's weight panels, made on first use by a Numba backend
        return fast.ops(panels=lambda: weight_panels(self.weights))

    def _after_layer(self):  # what the towers call as each encoder layer is done
        if not self.release_weights:
            return None

        def after(layer):  # the layer's pages, and its panels' (when it has them)
            arrays, packed = layer.arrays(), self.weights.panels or {}
            release(arrays + [packed[id(a)][1] for a in arrays if id(a) in packed])
        return after


def weight_panels(weights):  # -> {id(array): (array, its panels)} for every Linear weight of `weights`
    """The GEMM's packed copy of the Linear weights (kernels/matmul.py), made once per Weights: memory-mapped
    from the cache file of panels.py for a checkpoint's weights, packed in memory for arrays that are (a
    state dict); none when the store cannot be used (ALTCLIP_NP_PANELS=0, no room): then the Numba GEMM packs
    each weight on every call."""
    if weights.panels is None:
        from . import kernels
        from .kernels.matmul import LANES
        linear = {k: w for k, w in weights.items() if k.endswith(".weight") and w.ndim == 2 and "embeddings" not in k}
        if weights.files is None:
            store = {k: kernels.pack_panels(w) for k, w in linear.items()}
        elif panels.panels_enabled():
            kernels.pack_panels(np.zeros((1, 1), np.float32))  # the kernels compiled (or loaded) first: the
            # packing's message and time are its own
            store = panels.open_panels(linear, LANES, kernels.pack_panels, weights.files) or {}
        else:
            store = {}
        weights.panels = {id(linear[k]): (linear[k], store[k]) for k in store}
    return weights.panels


def _finish(output, return_dict):
    runtime.after_forward()  # a GC freeze, when runtime.tune_process() asked for one
    return output if return_dict or return_dict is None else output.to_tuple()


class AltCLIPTextModel(PreTrainedModel):
    """XLM-R text tower: `last_hidden_state` is the projected sequence, `pooler_output` its first token."""
    config_class = AltCLIPTextConfig

    @classmethod
    def expected_weights(cls, config):
        return text.expected_weights(config)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_attentions=False, output_hidden_states=False, return_dict=True):
        inputs = text_inputs(self.config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        projected, hidden_states, attentions = text.text_forward(
            self.weights, self.config, self._ops(), **inputs, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, after_layer=self._after_layer())
        out = BaseModelOutputWithPoolingAndProjection(last_hidden_state=projected, pooler_output=projected[:, 0],
                                                      hidden_states=hidden_states, attentions=attentions)
        return _finish(out, return_dict)


class AltCLIPVisionModel(PreTrainedModel):
    """CLIP ViT vision tower: `pooler_output` is the post-LayerNorm class token."""
    config_class = AltCLIPVisionConfig

    @classmethod
    def expected_weights(cls, config):
        return vision.expected_weights(config)

    def forward(self, pixel_values=None, interpolate_pos_encoding=False, output_attentions=False,
                output_hidden_states=False, return_dict=True):
        pixel_values = pixel_inputs(self.config, pixel_values, interpolate_pos_encoding)
        last, pooled, hidden_states, attentions = vision.vision_forward(
            self.weights, self.config, pixel_values, self._ops(), interpolate_pos_encoding, output_attentions,
            output_hidden_states, self._after_layer())
        out = BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_states,
                                         attentions=attentions)
        return _finish(out, return_dict)


def l2_normalize(x):  # [n, d] -> [n, d]
    return x / np.sqrt(np.square(x).sum(axis=-1, keepdims=True))


def cross_entropy_diagonal(logits):  # [n, n] -> scalar: mean of -log softmax(row i)[i]
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_probs))


def clip_loss(logits_per_text):  # [n, n] -> scalar: symmetric InfoNCE, matching pairs on the diagonal
    if logits_per_text.shape[0] != logits_per_text.shape[1]:
        raise ValueError(f"return_loss needs as many texts as images (pairs), got {logits_per_text.shape[0]} "
                         f"texts and {logits_per_text.shape[1]} images")
    return np.float32((cross_entropy_diagonal(logits_per_text) + cross_entropy_diagonal(logits_per_text.T)) / 2)


class AltCLIPModel(PreTrainedModel):
    """Both towers, their projections to a shared space, and the scaled cosine similarities."""
    config_class = AltCLIPConfig

    def __init__(self, config, weights, release_weights=True):
        super().__init__(config, weights, release_weights)  # the towers share self.weights, and its panels
        self.text_model = AltCLIPTextModel(config.text_config, self.weights, release_weights)
        self.vision_model = AltCLIPVisionModel(config.vision_config, self.weights, release_weights)

    @property
    def release_weights(self):
        return self._release

    @release_weights.setter
    def release_weights(self, value):  # the towers follow the joint model's setting
        self._release = value
        for tower in ("text_model", "vision_model"):
            if hasattr(self, tower):
                getattr(self, tower).release_weights = value

    @classmethod
    def expected_weights(cls, config):
        d = config.projection_dim
        return {**text.expected_weights(config.text_config), **vision.expected_weights(config.vision_config),
                "text_projection.weight": (d, config.text_config.project_dim),
                "visual_projection.weight": (d, config.vision_config.hidden_size), "logit_scale": ()}

    def get_text_features(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                          output_attentions=False, output_hidden_states=False, return_dict=True):
        """The text tower's output with `pooler_output` replaced by the projected [CLS] feature [B, d]."""
        out = self.text_model(input_ids, attention_mask, token_type_ids, position_ids,
                              output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        out.pooler_output = self._ops().linear(out.last_hidden_state[:, 0], self.weights["text_projection.weight"])
        return _finish(out, return_dict)

    def get_image_features(self, pixel_values=None, interpolate_pos_encoding=False, output_attentions=False,
                           output_hidden_states=False, return_dict=True):
        """The vision tower's output with `pooler_output` replaced by the projected image feature [B, d]."""
        out = self.vision_model(pixel_values, interpolate_pos_encoding, output_attentions, output_hidden_states)
        out.pooler_output = self._ops().linear(out.pooler_output, self.weights["visual_projection.weight"])
        return _finish(out, return_dict)

    def encode_text(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                    normalize=False):  # -> [B, d]
        """`get_text_features(...).pooler_output` for less work, as open_clip's encode_text: on the Numba
        backends padding tokens are left out of every layer and the last layer computes the first token only
        (nothing else of the tower's output is needed; fast.py). `normalize`: unit rows, as forward's
        text_embeds."""
        inputs = text_inputs(self.config.text_config, input_ids, attention_mask, token_type_ids, position_ids,
                             None)
        ops = self._ops()
        pooled = ops.encode_text(self.weights, self.config.text_config, **inputs, after_layer=self._after_layer())
        features = ops.linear(pooled, self.weights["text_projection.weight"])
        runtime.after_forward()
        return l2_normalize(features) if normalize else features

    def encode_image(self, pixel_values=None, interpolate_pos_encoding=False, normalize=False):  # -> [B, d]
        """`get_image_features(...).pooler_output` for less work: on the Numba backends the last layer computes
        the class token only (fast.py). `normalize`: unit rows, as forward's image_embeds."""
        pixel_values = pixel_inputs(self.config.vision_config, pixel_values, interpolate_pos_encoding)
        ops = self._ops()
        pooled = ops.encode_image(self.weights, self.config.vision_config, pixel_values, interpolate_pos_encoding,
                                  after_layer=self._after_layer())
        features = ops.linear(pooled, self.weights["visual_projection.weight"])
        runtime.after_forward()
        return l2_normalize(features) if normalize else features

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, return_loss=False, output_attentions=False, output_hidden_states=False,
                interpolate_pos_encoding=False, return_dict=True):
        if input_ids is None:
            raise ValueError("AltCLIPModel needs input_ids (the tokenized texts) and pixel_values (the images)")
        vision_out = self.vision_model(pixel_values, interpolate_pos_encoding, output_attentions,
                                       output_hidden_states)
        text_out = self.text_model(input_ids, attention_mask, token_type_ids, position_ids, None,
                                   output_attentions, output_hidden_states)
        linear = self._ops().linear
        image_embeds = l2_normalize(linear(vision_out.pooler_output, self.weights["visual_projection.weight"]))
        text_embeds = l2_normalize(linear(text_out.pooler_output, self.weights["text_projection.weight"]))
        logits_per_text = (text_embeds @ image_embeds.T) * np.exp(self.weights["logit_scale"])
        out = AltCLIPOutput(loss=clip_loss(logits_per_text) if return_loss else None,
                            logits_per_image=logits_per_text.T, logits_per_text=logits_per_text,
                            text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=text_out,
                            vision_model_output=vision_out)
        return _finish(out, return_dict)
