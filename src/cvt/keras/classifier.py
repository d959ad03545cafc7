"""``CvTImageClassifier``: a :class:`~cvt.keras.backbone.CvTBackbone` + final LayerNorm + pooling + ``head``.

``model(images)`` -> ``(B, num_classes)`` float32 logits (``activation=None``, the default; ``"softmax"`` for
probabilities), or ``(B, num_features)`` pooled features with ``num_classes=0``. Pooling ``"token"``: the
LayerNorm of the cls token (every released model); ``"avg"``: LayerNorm on every token, then the mean (the
official order for models without a cls token). ``compile()`` has defaults for fine-tuning: AdamW without
weight decay on norms, biases and the cls token (the official rule), sparse cross-entropy, accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from ..core.config import CvTConfig
from ..core.optim import decays
from ..core.spec import PretrainedSpec
from .backbone import CvTBackbone
from .layers import layer_norm

POOLINGS = ("token", "avg")


@keras.saving.register_keras_serializable(package="cvt")
class CvTImageClassifier(keras.Model):
    """See the module docstring.

    Args:
        backbone: the stages.
        num_classes: head size (``None``: the backbone config's ``num_classes``; ``0``: no head).
        pooling: ``"token"`` / ``"avg"``; ``None``: ``"token"`` when the last stage has a cls token.
        activation: applied to the logits (``None``: logits; ``"softmax"``...): the port's ``classifier_activation``.
        pretrained_cfg: the :class:`PretrainedSpec` (preprocessing, labels) of the loaded weights, if any.
    """

    def __init__(
        self,
        backbone: CvTBackbone,
        num_classes: int | None = None,
        pooling: str | None = None,
        activation: str | None = None,
        pretrained_cfg: PretrainedSpec | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        cfg = backbone.cvt_config
        num_classes = cfg.num_classes if num_classes is None else int(num_classes)
        has_cls = cfg.stages[-1].cls_token
        pooling = pooling or ("token" if has_cls else "avg")
        if pooling not in POOLINGS or (pooling == "token" and not has_cls):
            raise ValueError(f"pooling: {pooling!r} is not one of {POOLINGS} (or the last stage has no cls token)")
        norm = layer_norm("norm", cfg.layer_norm_eps)
        inputs = backbone.input
        feats = backbone(inputs)
        if pooling == "token":
            x = norm(feats["cls_token"][:, 0])  # (B, C)
        else:
            fmap = feats[f"stage{len(cfg.stages) - 1}"]
            if backbone.data_format == "channels_first":
                fmap = keras.ops.transpose(fmap, (0, 2, 3, 1))
            x = keras.ops.mean(norm(fmap), axis=(1, 2))  # LayerNorm per token, then the mean (official order)
        head = None
        if num_classes > 0:
            bound = 1.0 / math.sqrt(cfg.num_features)  # weight trunc-normal(0.02); bias keeps PyTorch's uniform
            head = keras.layers.Dense(
                num_classes,
                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                bias_initializer=keras.initializers.RandomUniform(-bound, bound),
                name="head",
            )
            x = head(x)
        # float32 out under mixed precision
        outputs = keras.layers.Activation(activation, dtype="float32", name="predictions")(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.backbone, self.norm, self.head = backbone, norm, head
        self.num_classes, self.pooling, self.activation = num_classes, pooling, activation
        if isinstance(pretrained_cfg, dict):
            pretrained_cfg = PretrainedSpec.from_dict(pretrained_cfg)
        self.pretrained_cfg = pretrained_cfg

    @property
    def cvt_config(self) -> CvTConfig:
        """The whole model's architecture (the backbone's with this head's class count)."""
        return self.backbone.cvt_config.replace(num_classes=self.num_classes)

    def compile(self, optimizer: Any = "auto", loss: Any = "auto", *, metrics: Any = "auto", **kwargs: Any) -> None:
        """Keras' ``compile`` with fine-tuning defaults for each ``"auto"`` argument (module docstring)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.05)
            optimizer.exclude_from_weight_decay(var_list=self.no_decay_variables())
        if loss == "auto":
            from_logits = self.activation is None
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def no_decay_variables(self) -> list[Any]:
        """The variables the core's rule (:func:`cvt.core.optim.decays`) exempts from weight decay, by native name:
        norms, biases and the cls token."""
        from .weights import native_variables  # NOTE imported here: cvt.keras.weights imports this module

        return [var for name, (var, _) in native_variables(self).items() if not decays(name, len(var.shape))]

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "activation": self.activation,
            "pretrained_cfg": self.pretrained_cfg.to_dict() if self.pretrained_cfg is not None else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CvTImageClassifier:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
