"""What a set of weights needs besides its architecture: preprocessing, class names, licence, source.

:class:`PretrainedSpec` is timm's "pretrained cfg", typed. The registry carries one per released checkpoint,
``cvt train`` writes one for the model it trained, and our native weight files store it in their metadata
next to the :class:`~cvt.core.config.CvTConfig`, so a file describes itself completely. Framework-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .labels import IMAGENET_1K as IMAGENET_1K  # the label set of every released checkpoint (re-exported)
from .labels import LabelSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class EvalPreprocess:
    """How a checkpoint's inputs are prepared for evaluation (the geometry: :mod:`cvt.core.preprocess`)."""

    img_size: int = 224
    crop_pct: float = 0.875  # < 1: resize short side to int(img_size / crop_pct), centre crop; 1: squash
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not isinstance(self.img_size, int) or self.img_size < 1:
            raise ConfigError(f"img_size: must be a positive integer, got {self.img_size!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct: must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation: {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"mean/std: expected 3 values each, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std: every value must be > 0, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalPreprocess:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})

    @classmethod
    def for_size(cls, img_size: int) -> EvalPreprocess:
        """The released checkpoints' rule: crop 0.875 below 384, squash at 384 and above."""
        return cls(img_size=img_size, crop_pct=0.875 if img_size < 384 else 1.0)

    @classmethod
    def from_hf_processor(cls, d: Mapping[str, Any]) -> EvalPreprocess:
        """From an HF ``preprocessor_config.json`` of a ConvNext/CvT image processor.

        ``size`` may be an int, ``{"shortest_edge": s}`` or ``{"height": h, "width": w}`` (square only);
        as in transformers, ``crop_pct`` (default 224/256) only applies below 384.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"preprocessor_config: expected a JSON object, got {type(d).__name__}")
        size = d.get("size", 224)
        if isinstance(size, Mapping):
            size = size.get("shortest_edge") or size.get("height") or size.get("width")
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"preprocessor_config size: unsupported value {d.get('size')!r}")
        crop_pct = d.get("crop_pct") or 224 / 256
        if not isinstance(crop_pct, (int, float)) or isinstance(crop_pct, bool):
            raise ConfigError(f"preprocessor_config crop_pct: expected a number, got {crop_pct!r}")
        crop = float(crop_pct) if size < 384 else 1.0
        names = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
        resample = d.get("resample", 3)
        if resample not in names:
            raise ConfigError(f"preprocessor_config resample: {resample!r} is not one of {sorted(names)} (PIL codes)")
        kwargs: dict[str, Any] = {"img_size": size, "crop_pct": crop, "interpolation": names[resample]}
        if d.get("do_normalize", True):
            for key, default in (("image_mean", IMAGENET_MEAN), ("image_std", IMAGENET_STD)):
                value = d.get(key, default)
                if (
                    not isinstance(value, (list, tuple))
                    or len(value) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                ):
                    raise ConfigError(f"preprocessor_config {key}: expected 3 numbers, got {value!r}")
                kwargs[key.replace("image_", "")] = tuple(float(v) for v in value)
        else:
            kwargs["mean"], kwargs["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(**kwargs)


@dataclass(frozen=True)
class PretrainedSpec:
    """Everything about a set of weights that is not architecture.

    ``labels``: the weights' class names (:class:`~cvt.core.labels.LabelSet`: names in index order, or the named
    set ``"imagenet-1k"``), or ``None`` when the weights carry none (then ``class_<i>`` is shown, or ImageNet for
    1000 classes). A list or tuple of names, or a set's name, is accepted and made a :class:`LabelSet`.
    """

    preprocess: EvalPreprocess = EvalPreprocess()
    labels: LabelSet | None = None
    license: str = ""
    source: str = ""  # where the weights come from (a hub repo, a file, "cvt train")

    def __post_init__(self) -> None:
        # names given as a list, a tuple or "imagenet-1k" (what files hold, what callers passed before LabelSet)
        object.__setattr__(self, "labels", LabelSet.parse(self.labels))

    def replace(self, **changes: Any) -> PretrainedSpec:
        return dataclasses.replace(self, **changes)

    def for_head(self, num_classes: int) -> PretrainedSpec:
        """This spec for a model of ``num_classes`` outputs: names of another length describe none, so they go."""
        labels = self.labels.for_head(num_classes) if self.labels is not None else None
        return self if labels is self.labels else self.replace(labels=labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "preprocess": self.preprocess.to_dict(),
            "labels": self.labels.to_json() if self.labels is not None else None,
            "license": self.license,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PretrainedSpec:
        pre = d.get("preprocess")
        return cls(
            preprocess=EvalPreprocess.from_dict(pre) if isinstance(pre, Mapping) else EvalPreprocess(),
            labels=LabelSet.parse(d.get("labels")),
            license=str(d.get("license") or ""),
            source=str(d.get("source") or ""),
        )
