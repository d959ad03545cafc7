"""``CvTBackbone``: the CvT stages as a functional Keras model that returns every stage's feature map.

``backbone(images)`` -> ``{"stage0": map, "stage1": map, ..., "cls_token": (B, 1, C)}`` (the cls token only when
the last stage has one). Images are ``(B, H, W, C_in)`` (``data_format="channels_last"``, Keras' default) or
``(B, C_in, H, W)`` (``"channels_first"``), any ``H, W``; maps come back in the same data format, strides 4/8/16
for the released models. Layer names are the official (and TF port's) ``stage0``, ``stage1``, ``stage2``.
Serialisable: ``get_config`` holds the :class:`~cvt.core.config.CvTConfig` as a dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import keras

from ..core.config import CvTConfig
from .layers import CvTStage

DATA_FORMATS = ("channels_last", "channels_first")


def check_data_format(data_format: str | None) -> str:
    """``None`` -> Keras' global ``image_data_format()``; anything but the two formats is an error."""
    data_format = data_format or keras.config.image_data_format()
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format: {data_format!r} is not one of {DATA_FORMATS}")
    return data_format


@keras.saving.register_keras_serializable(package="cvt")
class CvTBackbone(keras.Model):
    """The CvT stages (no final norm, no head) as a functional model; see the module docstring.

    Args:
        config: the architecture (a :class:`CvTConfig` or its ``to_dict()``).
        data_format: ``"channels_last"`` / ``"channels_first"``; ``None``: Keras' global setting.
        image_shape: ``(H, W)`` to fix the input size (``None``: any size, the default).
    """

    def __init__(
        self,
        config: CvTConfig | Mapping[str, Any],
        data_format: str | None = None,
        image_shape: tuple[int, int] | None = None,
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
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CvTBackbone:
        config = dict(config)
        if config.get("image_shape") is not None:
            config["image_shape"] = tuple(config["image_shape"])
        return cls(**config)
