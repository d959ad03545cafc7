"""``CvTImageClassifier``: a :class:`~cvt.keras.backbone.CvTBackbone` + final LayerNorm + pooling + ``head``.

``model(images)`` -> ``(B, num_classes)`` float32 logits (``activation=None``, the default; ``"softmax"`` for
probabilities), or ``(B, num_features)`` pooled features with ``num_classes=0``. Pooling ``"token"``: the
LayerNorm of the cls token (every released model); ``"avg"``: LayerNorm on every token, then the mean (the
official order for models without a cls token). ``compile()`` has defaults for fine-tuning: AdamW without
weight decay on norms, biases and the cls token (the official rule), sparse cross-entropy, accuracy.

Raw pixels (keras-hub's ``classifier.preprocessor``): integer images (uint8 ``(B, H, W, 3)``) given to ``predict``,
``predict_on_batch`` or an eager call are run through the attached :class:`~cvt.keras.preprocessor.
CvTImagePreprocessor` (set by ``create_model`` / ``from_preset``; PIL resize + crop + normalisation on the host,
exactly ``cvt predict``'s). Without one, or inside a traced function (``fit``, a ``jit``), integer inputs are refused
in one :class:`~cvt.core.errors.UsageError` line: never run unnormalised.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..core.config import CvTConfig
from ..core.errors import ImageError, UsageError
from ..core.labels import check_class_indices
from ..core.optim import decays
from ..core.spec import PretrainedSpec
from .backbone import CvTBackbone, dtype_scope
from .layers import layer_norm
from .preprocessor import CvTImagePreprocessor

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
        preprocessor: applied to integer (raw pixel) inputs (module docstring); ``None``: they are refused.
        dtype: a Keras dtype policy for the final norm and head (``None``: the global one); the logits stay
            float32.
    """

    def __init__(
        self,
        backbone: CvTBackbone,
        num_classes: int | None = None,
        pooling: str | None = None,
        activation: str | None = None,
        pretrained_cfg: PretrainedSpec | dict[str, Any] | None = None,
        preprocessor: CvTImagePreprocessor | dict[str, Any] | None = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        with dtype_scope(dtype) as policy:
            self._build_graph(backbone, num_classes, pooling, activation, **kwargs)
        self.policy_name = policy
        if isinstance(pretrained_cfg, dict):
            pretrained_cfg = PretrainedSpec.from_dict(pretrained_cfg)
        self.pretrained_cfg = pretrained_cfg
        if isinstance(preprocessor, dict):
            preprocessor = CvTImagePreprocessor.from_config(preprocessor)
        self.preprocessor = preprocessor

    def _build_graph(
        self, backbone: CvTBackbone, num_classes: int | None, pooling: str | None, activation: str | None, **kwargs: Any
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

    def fit(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Keras' ``fit``, refusing (:class:`~cvt.core.errors.DataError`, one line, before any step) in-memory
        sparse labels ``y`` (a 1-d numpy array or list) that are not integers in ``[0, num_classes)``: the sparse
        loss would give NaN or a silently wrong value for them. Labels inside a ``tf.data`` pipeline or a generator
        are not seen here; one-hot (2-d) ``y`` is the user's own encoding and passes unchanged."""
        if isinstance(y, (np.ndarray, list, tuple)) and self.num_classes:
            labels = np.asarray(y)
            if labels.ndim == 1:
                _check_labels(labels, self.num_classes)
        return super().fit(x, y, *args, **kwargs)

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
            "preprocessor": self.preprocessor.get_config() if self.preprocessor is not None else None,
            "dtype": self.policy_name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CvTImageClassifier:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

    # ------------------------------------------------------------------ raw pixels (module docstring)
    def _pixels(self, x: Any, entry: str) -> Any:
        """``x``, or the attached preprocessor's batch when ``x`` is integer pixels; refuses them without one."""
        if not _is_integer(x):
            return x
        shape = tuple(getattr(x, "shape", ()))
        if self.preprocessor is None:
            raise UsageError(
                f"{entry}: got integer pixels {shape} and this classifier has no preprocessor: attach one "
                "(model.preprocessor = cvt.keras.CvTImagePreprocessor(model.pretrained_cfg)) or pass float images "
                "already resized and normalised (preprocessor(images)); never run unnormalised"
            )
        try:
            return self.preprocessor(x)
        except ImageError:
            raise
        except Exception:  # a symbolic tensor (keras.Input, jit tracer, tf.function) has no pixels on the host
            raise UsageError(
                f"{entry}: integer pixels {shape} inside a traced function cannot be preprocessed; run "
                "model.preprocessor(images) on the host first (e.g. in the tf.data pipeline)"
            ) from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            args = (self._pixels(args[0], f"{type(self).__name__}.__call__"), *args[1:])
        return super().__call__(*args, **kwargs)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        # traced paths (fit, evaluate, predict_step under jit) reach here without __call__ on some backends.
        # NOTE the explicit `training` parameter: Keras passes the training flag only to a `call` that names it
        # (a `*args, **kwargs` signature silently runs fit with BatchNorm in inference mode and no dropout).
        if _is_integer(inputs):
            raise UsageError(
                f"{type(self).__name__}: integer pixels {tuple(inputs.shape)} reached the model inside a traced "
                "function; run model.preprocessor(images) on the host first (e.g. in the tf.data pipeline)"
            )
        return super().call(inputs, training=training, mask=mask)

    def predict(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Keras' ``predict``; integer pixel arrays go through ``self.preprocessor`` first (module docstring)."""
        return super().predict(self._pixels(x, f"{type(self).__name__}.predict"), *args, **kwargs)

    def predict_on_batch(self, x: Any) -> Any:
        """Keras' ``predict_on_batch``; integer pixel arrays go through ``self.preprocessor`` first."""
        return super().predict_on_batch(self._pixels(x, f"{type(self).__name__}.predict_on_batch"))

    # ------------------------------------------------------------------ presets (cvt.keras.preset)
    def save_to_preset(self, preset_dir: str | os.PathLike[str]) -> Path:
        """keras-hub's preset directory: the backbone's files plus ``task.json``, ``task.weights.h5`` and
        ``preprocessor.json`` (:func:`cvt.keras.preset.save_to_preset`)."""
        from .preset import save_to_preset

        return save_to_preset(self, preset_dir)

    @classmethod
    def from_preset(
        cls, preset: str | os.PathLike[str], load_weights: bool = True, dtype: Any = None, **kwargs: Any
    ) -> CvTImageClassifier:
        """:func:`cvt.keras.preset.from_preset`: a preset directory, a registry name, a weight file or a hub
        handle; ``classifier.preprocessor`` attached."""
        from .preset import from_preset

        return from_preset(preset, load_weights=load_weights, dtype=dtype, **kwargs)


def _is_integer(x: Any) -> bool:
    """Whether ``x`` is an array or tensor of integers (raw pixels), by its dtype alone (works on symbolic ones)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    try:
        name = keras.backend.standardize_dtype(dtype)
    except (ValueError, TypeError, AttributeError):
        name = str(np.dtype(dtype)) if isinstance(dtype, np.dtype) else str(dtype)
    return name.startswith(("uint", "int"))


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    """Sparse labels must be integers in ``[0, num_classes)`` (the rule of every front-end's trainer)."""
    check_class_indices(labels, num_classes, "y")
