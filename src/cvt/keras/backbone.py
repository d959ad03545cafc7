"""``CvTBackbone``: the CvT stages as a functional Keras model that returns every stage's feature map.

``backbone(images)`` -> ``{"stage0": map, "stage1": map, ..., "cls_token": (B, 1, C)}`` (the cls token only when
the last stage has one). ``backbone.pyramid_outputs``: keras-hub's ``FeaturePyramidBackbone`` convention, the same
maps keyed by level ``P{n}`` for a stride of ``2**n`` (``{"P2": stage0, "P3": stage1, "P4": stage2}`` for every
released CvT), for ``keras.Model(backbone.inputs, backbone.pyramid_outputs)`` under a dense head.
Images are ``(B, H, W, C_in)`` (``data_format="channels_last"``, Keras' default) or
``(B, C_in, H, W)`` (``"channels_first"``), any ``H, W``; maps come back in the same data format, strides 4/8/16
for the released models. Layer names are the official (and TF port's) ``stage0``, ``stage1``, ``stage2``.
Serialisable: ``get_config`` holds the :class:`~cvt.core.config.CvTConfig` as a dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras

from ..core.config import CvTConfig
from ..core.errors import UsageError
from .layers import CvTStage

DATA_FORMATS = ("channels_last", "channels_first")


def check_data_format(data_format: str | None) -> str:
    """``None`` -> Keras' global ``image_data_format()``; anything but the two formats is an error."""
    data_format = data_format or keras.config.image_data_format()
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format: {data_format!r} is not one of {DATA_FORMATS}")
    return data_format


def check_dtype(dtype: Any) -> Any:
    """A Keras dtype policy for ``dtype`` (a name such as ``"float32"``, ``"bfloat16"``, ``"mixed_bfloat16"``, or a
    ``DTypePolicy``); anything else is one :class:`UsageError` line."""
    try:
        return keras.dtype_policies.get(dtype)
    except (ValueError, TypeError):
        raise UsageError(
            f"dtype: {dtype!r} is not a Keras dtype policy (e.g. float32, bfloat16, mixed_bfloat16, mixed_float16)"
        ) from None


@contextlib.contextmanager
def dtype_scope(dtype: Any) -> Iterator[str]:
    """Build layers under ``dtype``'s policy (``None``: the global one, unchanged); yields the policy's name.

    Why a scope: every layer takes the global policy when it is built, so one setting reaches all of them (as
    keras-hub's ``dtype=`` does by passing it to each layer)."""
    if dtype is None:
        yield keras.config.dtype_policy().name
        return
    policy = check_dtype(dtype)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield policy.name
    finally:
        keras.config.set_dtype_policy(previous)


def pyramid_levels(config: CvTConfig) -> dict[str, int]:
    """``{level: stage index}``: ``P{n}`` for a stage of cumulative stride ``2**n`` (a later stage wins a shared
    level); a stage whose stride is no power of two keeps its name ``stage{i}``."""
    levels: dict[str, int] = {}
    for i, stride in enumerate(config.reductions):
        n = round(math.log2(stride)) if stride > 0 else -1
        levels[f"P{n}" if n >= 0 and 2**n == stride else f"stage{i}"] = i
    return levels


@keras.saving.register_keras_serializable(package="cvt")
class CvTBackbone(keras.Model):
    """The CvT stages (no final norm, no head) as a functional model; see the module docstring.

    Args:
        config: the architecture (a :class:`CvTConfig` or its ``to_dict()``).
        data_format: ``"channels_last"`` / ``"channels_first"``; ``None``: Keras' global setting.
        image_shape: ``(H, W)`` to fix the input size (``None``: any size, the default).
        dtype: a Keras dtype policy for every layer (``"bfloat16"``, ``"mixed_bfloat16"`` ...); ``None``: the
            global policy.
    """

    def __init__(
        self,
        config: CvTConfig | Mapping[str, Any],
        data_format: str | None = None,
        image_shape: tuple[int, int] | None = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        with dtype_scope(dtype) as policy:
            self._build_graph(config, data_format, image_shape, policy, **kwargs)

    def _build_graph(
        self,
        config: CvTConfig | Mapping[str, Any],
        data_format: str | None,
        image_shape: tuple[int, int] | None,
        policy: str,
        **kwargs: Any,
    ) -> None:
        cfg = config if isinstance(config, CvTConfig) else CvTConfig.from_dict(config)
        data_format = check_data_format(data_format)
        h, w = image_shape if image_shape is not None else (None, None)
        shape = (h, w, cfg.in_chans) if data_format == "channels_last" else (cfg.in_chans, h, w)
        inputs = keras.Input(shape=shape, name="images")
        x = inputs if data_format == "channels_last" else keras.layers.Permute((2, 3, 1), name="to_nhwc")(inputs)
        stages = [
            CvTStage(dataclasses.asdict(s), cfg.activation, cfg.layer_norm_eps, cfg.init, name=f"stage{i}")
            for i, s in enumerate(cfg.stages)
        ]
        outputs: dict[str, Any] = {}
        for i, stage in enumerate(stages):
            tokens, x = stage(x)  # (B, N_i, C_i) tokens (cls first, if any) and their (B, H_i, W_i, C_i) map
            outputs[f"stage{i}"] = x if data_format == "channels_last" else keras.ops.transpose(x, (0, 3, 1, 2))
        if cfg.has_cls_token:
            outputs["cls_token"] = tokens[:, :1]
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.cvt_config = cfg
        self.data_format = data_format
        self.image_shape = image_shape
        self.stages = stages
        self.policy_name = policy
        self._pyramid = {level: outputs[f"stage{i}"] for level, i in pyramid_levels(cfg).items()}

    @property
    def pyramid_outputs(self) -> dict[str, Any]:
        """``{"P2": stage0 map, "P3": stage1 map, "P4": stage2 map}`` (symbolic; :func:`pyramid_levels`)."""
        return dict(self._pyramid)

    @property
    def num_features(self) -> int:
        return self.cvt_config.num_features

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "config": self.cvt_config.to_dict(),
            "data_format": self.data_format,
            "image_shape": list(self.image_shape) if self.image_shape is not None else None,
            "dtype": self.policy_name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CvTBackbone:
        config = dict(config)
        if config.get("image_shape") is not None:
            config["image_shape"] = tuple(config["image_shape"])
        return cls(**config)

    def save_to_preset(self, preset_dir: str | os.PathLike[str]) -> Path:
        """keras-hub's preset directory: ``config.json``, ``metadata.json``, ``model.weights.h5``
        (:func:`cvt.keras.preset.save_to_preset`)."""
        from .preset import save_to_preset

        return save_to_preset(self, preset_dir)

    @classmethod
    def from_preset(
        cls, preset: str | os.PathLike[str], load_weights: bool = True, dtype: Any = None, **kwargs: Any
    ) -> CvTBackbone:
        """A backbone from a preset directory, a registry name, a weight file or a hub handle
        (:func:`cvt.keras.preset.backbone_from_preset`)."""
        from .preset import backbone_from_preset

        return backbone_from_preset(preset, load_weights=load_weights, dtype=dtype, **kwargs)
