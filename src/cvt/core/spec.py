"""What a set of weights needs besides its architecture: preprocessing, class names, licence, source.

:class:`PretrainedSpec` is timm's "pretrained cfg", typed. The registry carries one per released checkpoint,
``cvt train`` writes one for the model it trained, and our native weight files store it in their metadata
next to the :class:`~cvt.core.config.CvTConfig`, so a file describes itself completely. Framework-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

from .errors import ConfigError
from .labels import IMAGENET_1K as IMAGENET_1K  # the label set of every released checkpoint (re-exported)
from .labels import LabelSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


# the ranges preprocessing values must lie in: pixels are scaled to [0, 1] before normalising, so a mean outside
# [0, 1] is no mean of pixels; a std under 1e-3 multiplies pixels by more than 1000 (float16 and the first layers
# overflow) and one over 1e3 flattens every image to its mean
MEAN_RANGE = (0.0, 1.0)
STD_RANGE = (1e-3, 1e3)


def _three_numbers(name: str, value: Any, bounds: tuple[float, float]) -> tuple[float, float, float]:
    """``value`` as 3 finite floats within ``bounds`` (inclusive), else :class:`ConfigError` naming ``name``."""
    try:
        numbers = tuple(value)
    except TypeError:
        raise ConfigError(f"{name}: expected 3 numbers (one per channel), got {value!r}") from None
    if len(numbers) != 3 or not all(isinstance(v, Real) and not isinstance(v, bool) for v in numbers):
        raise ConfigError(f"{name}: expected 3 numbers (one per channel), got {value!r}")
    low, high = bounds
    floats = tuple(float(v) for v in numbers)
    if not all(low <= v <= high for v in floats):  # NaN and inf fail this too
        raise ConfigError(f"{name}: every value must be finite and in [{low:g}, {high:g}], got {list(floats)}")
    return floats  # type: ignore[return-value]


@dataclass(frozen=True)
class EvalPreprocess:
    """How a checkpoint's inputs are prepared for evaluation (the geometry: :mod:`cvt.core.preprocess`)."""

    img_size: int = 224
    crop_pct: float = 0.875  # < 1: resize short side to int(img_size / crop_pct), centre crop; 1: squash
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # every value here enters the numbers of each image: finite and in range, or refused (NaN here was nan% out)
        object.__setattr__(self, "mean", _three_numbers("mean", self.mean, MEAN_RANGE))
        object.__setattr__(self, "std", _three_numbers("std", self.std, STD_RANGE))
        if not isinstance(self.img_size, int) or isinstance(self.img_size, bool) or self.img_size < 1:
            raise ConfigError(f"img_size: must be a positive integer, got {self.img_size!r}")
        if (
            not isinstance(self.crop_pct, Real)
            or isinstance(self.crop_pct, bool)
            or not 0.0 < self.crop_pct <= 1.0  # NaN fails this too
        ):
            raise ConfigError(f"crop_pct: must be a number in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation: {self.interpolation!r} is not one of {INTERPOLATIONS}")

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
        as in transformers, ``crop_pct`` (default 224/256) only applies below 384. A ``ViTImageProcessor``
        (what :meth:`to_hf_processor` writes for a squash below 384) resizes to ``size`` without a crop.
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
        # ViT's processor resizes to (height, width): no crop_pct; ConvNext's crops only below 384
        squash = str(d.get("image_processor_type") or "").startswith(cls._SQUASH_PROCESSOR)
        crop = float(crop_pct) if size < 384 and not squash else 1.0
        names = dict(enumerate(cls._PIL_RESAMPLE))
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

    def to_hf_processor(self) -> dict[str, Any]:
        """The HF ``preprocessor_config.json`` dict that prepares images as this does (inverse of
        :meth:`from_hf_processor`: ``from_hf_processor(p.to_hf_processor()) == p``).

        A crop below 384 and a squash at 384 and above: ``ConvNextImageProcessor`` (what the released CvTs on the
        hub use). A squash below 384, which ConvNext's processor cannot spell (it always crops there):
        ``ViTImageProcessor``. A crop at 384 and above has no spelling (ConvNext never crops there, ViT never
        crops): :class:`ConfigError`. transformers floors the crop offset where we round (see the README).
        """
        size = self.img_size
        if self.crop_pct < 1.0 and size >= 384:
            raise ConfigError(
                f"crop_pct: {self.crop_pct} at img_size {size} has no preprocessor_config.json spelling "
                "(transformers' ConvNext image processor crops only below 384)"
            )
        common: dict[str, Any] = {
            "do_resize": True,
            "resample": self._PIL_RESAMPLE.index(self.interpolation),
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }
        if self.crop_pct >= 1.0 and size < 384:
            return {"image_processor_type": self._SQUASH_PROCESSOR, "size": {"height": size, "width": size}, **common}
        return {
            "image_processor_type": "ConvNextImageProcessor",
            "size": {"shortest_edge": size},
            "crop_pct": self.crop_pct,
            **common,
        }

    # PIL's resampling codes (what preprocessor_config.json's "resample" holds) by value
    _PIL_RESAMPLE = ("nearest", "lanczos", "bilinear", "bicubic")
    _SQUASH_PROCESSOR = "ViTImageProcessor"  # transformers' plain (height, width) resize, no crop


@dataclass(frozen=True)
class PretrainedSpec(Mapping[str, Any]):
    """Everything about a set of weights that is not architecture.

    ``labels``: the weights' class names (:class:`~cvt.core.labels.LabelSet`: names in index order, or the named
    set ``"imagenet-1k"``), or ``None`` when the weights carry none (then ``class_<i>`` is shown, or ImageNet for
    1000 classes). A list or tuple of names, or a set's name, is accepted and made a :class:`LabelSet`.

    It is also timm's ``pretrained_cfg`` dict, read-only: ``spec["mean"]``, ``spec.get("crop_pct")``,
    ``dict(spec)`` give timm's keys (:meth:`to_timm`), so ``timm.data.resolve_data_config(model=m)`` works on our
    models; :meth:`from_timm` / :meth:`with_timm` read timm's keys back.
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

    # ------------------------------------------------------------------ timm's dialect
    # timm's pretrained_cfg names of the first convolution and the classifier (native state-dict names)
    TIMM_FIRST_CONV = "stages.0.patch_embed.proj"
    TIMM_CLASSIFIER = "head"
    # the timm pretrained_cfg keys a spec can take (with_timm, timm's pretrained_cfg_overlay)
    TIMM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "license", "label_names")

    def to_timm(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg`` keys for these weights (what the mapping view shows).

        ``crop_pct < 1`` is timm's ``crop_mode="center"`` (resize the short side to ``size / crop_pct``, centre
        crop) and ``crop_pct == 1`` its ``"squash"`` (resize to ``size x size``): timm's transforms then equal ours.
        ``num_classes`` (and ``label_names`` for names that are no named set) only when the weights carry names.
        """
        pre = self.preprocess
        d: dict[str, Any] = {
            "input_size": (3, pre.img_size, pre.img_size),  # mean/std have 3 values: 3 channels
            "interpolation": pre.interpolation,
            "crop_pct": pre.crop_pct,
            "crop_mode": "center" if pre.crop_pct < 1.0 else "squash",
            "mean": pre.mean,
            "std": pre.std,
            "fixed_input_size": False,  # any H, W runs
            "first_conv": self.TIMM_FIRST_CONV,
            "classifier": self.TIMM_CLASSIFIER,
        }
        if self.labels is not None:
            d["num_classes"] = len(self.labels)
            if self.labels.inline:  # a named set (imagenet-1k) timm finds from the class count itself
                d["label_names"] = self.labels.names
        if self.license:
            d["license"] = self.license
        return d

    def __getitem__(self, key: str) -> Any:
        return self.to_timm()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_timm())

    def __len__(self) -> int:
        return len(self.to_timm())

    def with_timm(self, changes: Mapping[str, Any]) -> PretrainedSpec:
        """This spec with timm ``pretrained_cfg`` keys changed (timm's ``pretrained_cfg_overlay``).

        Accepted: :attr:`TIMM_KEYS`. ``crop_pct`` alone picks its mode (``< 1`` centre crop, ``1`` squash); timm's
        other combinations (a centre crop at ``crop_pct`` 1, a squash below 1, ``border``) are not cvt's
        preprocessing and raise :class:`ConfigError`, as does any other key.
        """
        unknown = sorted(set(changes) - set(self.TIMM_KEYS))
        if unknown:
            raise ConfigError(
                f"pretrained_cfg_overlay: {unknown[0]!r} cannot be applied to a cvt model (accepted: "
                f"{', '.join(self.TIMM_KEYS)})"
            )
        pre = self.preprocess.to_dict()
        if "input_size" in changes:
            pre["img_size"] = self._timm_img_size(changes["input_size"])
        for key in ("interpolation", "mean", "std"):
            if key in changes:
                pre[key] = changes[key]
        pre["crop_pct"] = self._timm_crop_pct(changes, float(pre["crop_pct"]))
        try:
            preprocess = EvalPreprocess.from_dict(pre)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"pretrained_cfg_overlay: {e}") from None
        spec = self.replace(preprocess=preprocess)
        if "license" in changes:
            spec = spec.replace(license=str(changes["license"] or ""))
        if "label_names" in changes:
            spec = spec.replace(labels=LabelSet.parse(tuple(changes["label_names"] or ())))
        return spec

    @classmethod
    def from_timm(cls, cfg: Mapping[str, Any]) -> PretrainedSpec:
        """A spec from a timm ``pretrained_cfg`` dict: the keys of :attr:`TIMM_KEYS` it holds (timm's ``url``,
        ``hf_hub_id``, ... say nothing about preprocessing and are ignored). ``from_timm(s.to_timm()) == s`` but for
        ``source`` and a named label set (``"imagenet-1k"``), which timm's dict does not carry."""
        return cls().with_timm({k: v for k, v in cfg.items() if k in cls.TIMM_KEYS and v is not None})

    @staticmethod
    def _timm_img_size(input_size: Any) -> int:
        """timm's ``input_size`` ``(3, s, s)`` -> ``s``; cvt's preprocessing is square, on 3 channels."""
        try:
            chans, height, width = (int(v) for v in input_size)
        except (TypeError, ValueError):
            raise ConfigError(f"input_size: expected (channels, height, width), got {input_size!r}") from None
        if chans != 3 or height != width:
            raise ConfigError(f"input_size: cvt's preprocessing takes (3, s, s), got {tuple(input_size)}")
        return height

    @staticmethod
    def _timm_crop_pct(changes: Mapping[str, Any], current: float) -> float:
        """cvt's ``crop_pct`` for timm's ``crop_pct`` / ``crop_mode`` changes (:meth:`with_timm`)."""
        mode = changes.get("crop_mode")
        pct = changes.get("crop_pct", current if mode is None else None)
        if mode is None:  # crop_pct alone (or nothing): cvt's rule, < 1 crops and 1 squashes
            return float(pct)
        if mode == "squash":
            pct = 1.0 if pct is None else float(pct)
            if pct != 1.0:
                raise ConfigError(
                    f"crop_mode: 'squash' with crop_pct {pct} is not cvt's preprocessing (use crop_pct 1.0)"
                )
            return pct
        if mode == "center":
            pct = current if pct is None else float(pct)
            if pct >= 1.0:
                raise ConfigError(
                    "crop_mode: 'center' with crop_pct 1.0 (crop the short side's square) is not cvt's preprocessing; "
                    "use crop_pct < 1, or crop_mode 'squash'"
                )
            return pct
        raise ConfigError(f"crop_mode: {mode!r} is not supported (cvt's preprocessing: 'center' or 'squash')")
