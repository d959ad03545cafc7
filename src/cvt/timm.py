"""timm interop: ``import cvt.timm`` registers cvt's CvT models in timm's model registry.

timm has no plugin entry points: a model exists in timm's registry once a module that calls
``timm.models.register_model`` has been imported. So import this module once, before ``timm.create_model`` (or
before running timm's ``train.py`` / ``validate.py``, e.g. through ``runpy``)::

    import timm
    import cvt.timm  # registers cvt_13, cvt_21_384, cvt_w24_384_22k, ...

    model = timm.create_model("cvt_13", pretrained=True)          # cvt-13's released weights, through cvt
    model = timm.create_model("cvt_21_384.ms_in22k_ft_in1k", pretrained=True, num_classes=10, drop_path_rate=0.1)
    cfg = timm.data.resolve_data_config(model=model)             # equal to cvt's own evaluation preprocessing

Names (:data:`MODELS`): the architectures ``cvt_13``, ``cvt_21``, ``cvt_w24`` (224), ``cvt_13_384``,
``cvt_21_384``, ``cvt_w24_384`` (384) and the small ``cvt_tiny``, ``cvt_digits``; released weights are timm
pretrained tags (``ms_in1k``, ``ms_in22k_ft_in1k``), and the issue's spellings ``cvt_13_384_22k``,
``cvt_21_384_22k``, ``cvt_w24_384_22k`` are registered too. ``timm.list_models("cvt*", pretrained=True)`` lists the
released ones. ``timm.create_model(name, pretrained=True)`` downloads and converts through cvt
(``cvt.create_model(<cvt name>, pretrained=True)``: the hub copy, cached), never through timm's loader.

Checkpoints both ways: timm's ``load_checkpoint(model, "x.safetensors")`` reads our native file as is (its tensors
carry the model's own names), and ``cvt.create_model(weights="model_best.pth.tar")`` reads timm's training
checkpoints (their ``state_dict``); :func:`clean_checkpoint` writes either their weights or their EMA weights
as our native ``.safetensors``.

timm needs torchvision, built for the installed torch (``pip install timm`` beside a matching
``torch``/``torchvision`` pair); cvt itself never needs either.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core import pickles
from .core.errors import MissingDependencyError, UsageError, WeightsError, first_line
from .core.keys import to_native
from .core.loading import head_classes
from .core.presets import default_spec, get_checkpoint, get_config, infer_config
from .core.spec import PretrainedSpec
from .core.weights import LoadedArrays, check_fits, check_values, save_native_arrays

try:
    import timm  # noqa: F401  (imported for its registry; also what raises when timm cannot load)
    from timm.models import generate_default_cfgs, register_model
except (ImportError, RuntimeError, OSError) as _e:  # torchvision built for another torch raises RuntimeError
    raise MissingDependencyError(
        f"cvt.timm needs timm, which cannot be imported ({first_line(_e)}): pip install timm, with a torchvision "
        "built for the installed torch"
    ) from None

from .torch.factory import create_model

PAPER = "CvT: Introducing Convolutions to Vision Transformers"
PAPER_ID = "arXiv:2103.15808"
ORIGIN = "https://github.com/microsoft/CvT"


@dataclass(frozen=True)
class TimmModel:
    """One timm name: the cvt model it builds without a tag, and its pretrained tags -> cvt checkpoint names.

    The first tag is timm's default (what ``pretrained=True`` on the bare name loads).
    """

    cvt_name: str  # an architecture or checkpoint name of cvt's registry
    tags: dict[str, str] = field(default_factory=dict)  # timm tag -> cvt released checkpoint


IN1K, IN22K = "ms_in1k", "ms_in22k_ft_in1k"  # timm's spelling: who trained them, on what
MODELS: dict[str, TimmModel] = {
    "cvt_13": TimmModel("cvt-13", {IN1K: "cvt-13"}),
    "cvt_13_384": TimmModel("cvt-13-384", {IN1K: "cvt-13-384", IN22K: "cvt-13-384-22k"}),
    "cvt_13_384_22k": TimmModel("cvt-13-384-22k", {IN22K: "cvt-13-384-22k"}),
    "cvt_21": TimmModel("cvt-21", {IN1K: "cvt-21"}),
    "cvt_21_384": TimmModel("cvt-21-384", {IN1K: "cvt-21-384", IN22K: "cvt-21-384-22k"}),
    "cvt_21_384_22k": TimmModel("cvt-21-384-22k", {IN22K: "cvt-21-384-22k"}),
    "cvt_w24": TimmModel("cvt-w24"),
    "cvt_w24_384": TimmModel("cvt-w24-384-22k", {IN22K: "cvt-w24-384-22k"}),
    "cvt_w24_384_22k": TimmModel("cvt-w24-384-22k", {IN22K: "cvt-w24-384-22k"}),
    "cvt_tiny": TimmModel("cvt-tiny"),
    "cvt_digits": TimmModel("cvt-digits"),
}


# ---------------------------------------------------------------------------- timm's pretrained cfgs
def _timm_cfg(cvt_name: str, weights: bool) -> dict[str, Any]:
    """timm's ``PretrainedCfg`` (as a dict) for a cvt name: our spec's timm keys, plus where released weights live.

    ``hf_hub_id`` names the hub copy cvt downloads (timm counts a cfg with one as pretrained); timm's own loader is
    never used for it (the entry point loads through cvt).
    """
    config = get_config(cvt_name)
    cfg = dict(default_spec(config).to_timm())
    cfg.pop("label_names", None)
    cfg.update(num_classes=config.num_classes, paper_name=PAPER, paper_ids=PAPER_ID, origin_url=ORIGIN)
    released = get_checkpoint(cvt_name) if weights else None
    if released is not None:
        cfg["hf_hub_id"] = released.hf_repo
        cfg["notes"] = (f"loaded by cvt: cvt.create_model({released.name!r}, pretrained=True)",)
    return cfg


def _default_cfgs() -> dict[str, Any]:
    """``{timm name: DefaultCfg}``: every tag of every name (an untagged entry for names without weights)."""
    cfgs: dict[str, dict[str, Any]] = {}
    for name, entry in MODELS.items():
        if not entry.tags:
            cfgs[name] = _timm_cfg(entry.cvt_name, weights=False)
        for tag, checkpoint in entry.tags.items():
            cfgs[f"{name}.{tag}"] = _timm_cfg(checkpoint, weights=True)
    return generate_default_cfgs(cfgs)


# timm's register_model reads the pretrained cfgs from the entry point's module, under this name
default_cfgs = _default_cfgs()


# ---------------------------------------------------------------------------- entry points
def build(
    timm_name: str,
    pretrained: bool = False,
    pretrained_cfg: str | Mapping[str, Any] | Any = None,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Any:
    """What ``timm.create_model(timm_name, ...)`` calls: the cvt model of that name and tag.

    Args:
        timm_name: a key of :data:`MODELS`.
        pretrained: load the tag's released weights through cvt (``cvt.create_model(<name>, pretrained=True)``).
        pretrained_cfg: what timm passes: a tag (``"ms_in22k_ft_in1k"``, from ``"cvt_13_384.ms_in22k_ft_in1k"``), or
            a whole timm cfg (dict or ``PretrainedCfg``), whose preprocessing keys then replace the spec's.
        pretrained_cfg_overlay: timm keys to change in the spec, ``file``: local weights instead of the download.
        cache_dir: where to cache the download (default: huggingface_hub's cache).
        **kwargs: :func:`cvt.create_model`'s (``num_classes``, ``drop_rate``, ``drop_path_rate``, ``global_pool``,
            ``features_only``, ``in_chans``, ``device``, ...) and ``dtype``.

    Returns:
        A :class:`cvt.torch.model.CvT` (a :class:`~cvt.torch.factory.CvTFeatures` with ``features_only``).
    """
    entry = MODELS[timm_name]
    tag, overlay = _tag_and_overlay(timm_name, entry, pretrained_cfg)
    overlay.update(pretrained_cfg_overlay or {})
    cvt_name = entry.tags[tag] if tag else entry.cvt_name
    dtype = kwargs.pop("dtype", None)
    if pretrained and not entry.tags and overlay.get("file") is None:
        with_weights = ", ".join(n for n, e in MODELS.items() if e.tags)
        raise UsageError(f"{timm_name}: cvt has no released weights for it (pretrained: {with_weights})")
    weights = None
    if pretrained and cache_dir is not None and overlay.get("file") is None:
        from .core.hub import download_checkpoint

        released = get_checkpoint(cvt_name)
        assert released is not None  # every tag names a released checkpoint
        weights, pretrained = download_checkpoint(released, cache_dir=cache_dir), False
    model = create_model(
        cvt_name, pretrained=pretrained, weights=weights, pretrained_cfg_overlay=overlay or None, **kwargs
    )
    return model.to(dtype=dtype) if dtype is not None else model


def _tag_and_overlay(timm_name: str, entry: TimmModel, pretrained_cfg: Any) -> tuple[str | None, dict[str, Any]]:
    """The tag timm asked for (default: the first) and the preprocessing keys of a whole cfg it passed."""
    default = next(iter(entry.tags), None)
    if pretrained_cfg is None or pretrained_cfg == "":
        return default, {}
    if isinstance(pretrained_cfg, str):
        if pretrained_cfg not in entry.tags:
            known = ", ".join(entry.tags) or "none"
            raise UsageError(f"{timm_name}: unknown pretrained tag {pretrained_cfg!r} (tags: {known})")
        return pretrained_cfg, {}
    cfg = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else pretrained_cfg
    if not isinstance(cfg, Mapping):
        raise UsageError(f"pretrained_cfg: expected a tag, a dict or timm's PretrainedCfg, got {type(cfg).__name__}")
    tag = cfg.get("tag") if cfg.get("tag") in entry.tags else default
    return tag, {k: v for k, v in cfg.items() if (k in PretrainedSpec.TIMM_KEYS or k == "file") and v is not None}


def _entry_point(timm_name: str) -> Callable[..., Any]:
    """A named function for timm's registry (it registers a function under its ``__name__``, from its module)."""

    def entry_point(pretrained: bool = False, **kwargs: Any) -> Any:
        return build(timm_name, pretrained=pretrained, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = timm_name
    entry_point.__module__ = __name__
    entry_point.__doc__ = f"timm entry point: cvt's {MODELS[timm_name].cvt_name} (:func:`cvt.timm.build`)."
    return entry_point


__all__ = ["MODELS", "TimmModel", "build", "clean_checkpoint", "default_cfgs"]  # timm's registration adds the names


def _register() -> None:
    for timm_name in MODELS:
        globals()[timm_name] = register_model(_entry_point(timm_name))


_register()


# ---------------------------------------------------------------------------- timm's training checkpoints
def clean_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    use_ema: bool = False,
    name: str | None = None,
) -> Path:
    """timm's ``clean_checkpoint.py`` for cvt: a timm training checkpoint -> our native ``.safetensors``.

    Args:
        src: a file timm's ``CheckpointSaver`` wrote (``model_best.pth.tar``, ``checkpoint-N.pth.tar``), read
            without torch and without running code (its ``args`` Namespace and optimizer state are allowed through).
        dst: the ``.safetensors`` file to write (config and spec in its metadata, as every native file).
        use_ema: take ``state_dict_ema`` (``--model-ema`` runs) instead of ``state_dict``.
        name: the architecture (cvt or timm name). Default: the checkpoint's ``args.model`` when it is one of
            :data:`MODELS`, else inferred from the tensors' shapes (heads are not stored in weights: name it then).

    Returns:
        ``dst``. ``cvt.create_model(weights=dst)`` then builds the model with those weights.
    """
    src = Path(src)
    obj = pickles.read_pickle(src)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{src}: not a timm training checkpoint (it holds a {type(obj).__name__}, not a dict)")
    key = _weights_key(obj, src, use_ema)
    try:
        sd, fmt = to_native(dict(obj[key]))
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{src}: {key}: {first_line(e)}") from None
    check_values(sd, src)
    loaded = LoadedArrays(sd, fmt, src)
    config = _checkpoint_config(obj, sd, name).replace(num_classes=head_classes(sd))
    check_fits(config, loaded)
    return save_native_arrays(sd, config, dst, default_spec(config).for_head(config.num_classes))


def _weights_key(obj: Mapping[str, Any], src: Path, use_ema: bool) -> str:
    """The key of the weights to take, by timm's rule (``state_dict``, else ``model``; EMA ones on request)."""
    wanted = ("state_dict_ema", "model_ema") if use_ema else ("state_dict", "model")
    key = next((k for k in wanted if isinstance(obj.get(k), Mapping)), None)
    if key is not None:
        return key
    if use_ema:
        raise WeightsError(
            f"{src}: holds no EMA weights (state_dict_ema): it was trained without --model-ema; "
            "use_ema=False takes its state_dict"
        )
    raise WeightsError(f"{src}: holds no state_dict (keys: {', '.join(sorted(map(str, obj))[:8])})")


def _checkpoint_config(obj: Mapping[str, Any], sd: Mapping[str, Any], name: str | None) -> Any:
    """The architecture of a checkpoint's weights: ``name``, else its ``args.model``, else the tensors' shapes."""
    if name is None:
        args = obj.get("args")
        arch = getattr(args, "model", None) if args is not None else None
        arch = arch.split(".")[0] if isinstance(arch, str) else None  # "cvt_13.ms_in1k": the architecture
        name = arch if arch in MODELS else None
    if name is None:
        return infer_config(sd)
    return get_config(MODELS[name].cvt_name if name in MODELS else name)
