"""The one registry: named architectures and the released checkpoints.

Architectures (``cvt-13``, ``cvt-21``, ``cvt-w24``, and the small ``cvt-tiny`` / ``cvt-digits``) are
:class:`~cvt.core.config.CvTConfig` values. Checkpoints (the seven released by Microsoft) pair an
architecture with a resolution, where the weights live and a :class:`~cvt.core.spec.PretrainedSpec`
(preprocessing, labels, licence); ``cvt-13`` and ``cvt-21`` name both the architecture and its 224 checkpoint.
Framework-free.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CvTConfig, StageConfig
from .errors import UnknownModelError, UsageError, WeightsError
from .spec import IMAGENET_1K, EvalPreprocess, PretrainedSpec

LICENSE = "MIT (official weights); Apache-2.0 (HF hub copies)"
DEFAULT_MODEL = "cvt-13"  # what `cvt predict` / `cvt export` (and Predictor()) use when given no model and no weights


def _official(
    name: str, dims: tuple[int, ...], heads: tuple[int, ...], depths: tuple[int, ...], drop_path: float
) -> CvTConfig:
    """The official three-stage layout (7x7/4 then 3x3/2 embeddings, cls token in the last stage)."""
    stages = (
        StageConfig(dims[0], depths[0], heads[0], patch_size=7, patch_stride=4, patch_padding=2),
        StageConfig(dims[1], depths[1], heads[1]),
        StageConfig(dims[2], depths[2], heads[2], cls_token=True, drop_path_rate=drop_path),
    )
    return CvTConfig(stages=stages, name=name)


ARCHITECTURES: dict[str, CvTConfig] = {
    "cvt-13": _official("cvt-13", (64, 192, 384), (1, 3, 6), (1, 2, 10), 0.1),
    "cvt-21": _official("cvt-21", (64, 192, 384), (1, 3, 6), (1, 4, 16), 0.1),
    "cvt-w24": _official("cvt-w24", (192, 768, 1024), (3, 12, 16), (2, 2, 20), 0.3),
    # Not released models. cvt-tiny: 0.1M parameters for tests (depths 1/2/3 so that it exports to HF,
    # which indexes drop-path rates by stage).
    "cvt-tiny": CvTConfig(
        stages=(
            StageConfig(16, 1, 1, patch_size=7, patch_stride=4, patch_padding=2),
            StageConfig(32, 2, 2),
            StageConfig(48, 3, 3, cls_token=True, drop_path_rate=0.1),
        ),
        name="cvt-tiny",
        num_classes=10,
        img_size=64,
    ),
    # cvt-digits: 1.7M parameters for 32x32 inputs (8x8 digits upscaled): the official 7x7/4 stem gives an 8x8
    # token map, one token per original pixel; then 4x4 and 2x2 maps plus the cls token. Chosen on seeds 0-2
    # against a 32/96/128-wide model (0.8M; 98.9-99.4%): see configs/digits.yaml.
    "cvt-digits": CvTConfig(
        stages=(
            StageConfig(64, 1, 1, patch_size=7, patch_stride=4, patch_padding=2),
            StageConfig(128, 2, 2),
            StageConfig(192, 2, 3, cls_token=True, drop_path_rate=0.1),
        ),
        num_classes=10,
        img_size=32,
        name="cvt-digits",
    ),
}


@dataclass(frozen=True)
class Checkpoint:
    """A released checkpoint: its architecture, where its weights live, and how its inputs are prepared."""

    name: str
    arch: str
    img_size: int
    pretrain: str  # "in1k" or "in22k-ft-in1k"
    hf_repo: str  # converted copy on the HF hub (Apache-2.0 model cards)
    official_file: str  # name in the official OneDrive model zoo (MIT)
    top1: float  # paper Table 3, ImageNet-1k val top-1
    crop_pct: float  # 0.875: resize short side to size/crop_pct, centre crop; 1.0: squash to size x size

    @property
    def spec(self) -> PretrainedSpec:
        return PretrainedSpec(
            preprocess=EvalPreprocess(img_size=self.img_size, crop_pct=self.crop_pct),
            labels=IMAGENET_1K,
            license=LICENSE,
            source=f"hf://{self.hf_repo} (official: {self.official_file})",
        )


def _released(name: str, arch: str, size: int, pretrain: str, official: str, top1: float) -> Checkpoint:
    crop_pct = EvalPreprocess.for_size(size).crop_pct  # the released checkpoints' rule
    return Checkpoint(name, arch, size, pretrain, f"microsoft/{name}", official, top1, crop_pct)


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        _released("cvt-13", "cvt-13", 224, "in1k", "CvT-13-224x224-IN-1k.pth", 81.6),
        _released("cvt-13-384", "cvt-13", 384, "in1k", "CvT-13-384x384-IN-1k.pth", 83.0),
        _released("cvt-21", "cvt-21", 224, "in1k", "CvT-21-224x224-IN-1k.pth", 82.5),
        _released("cvt-21-384", "cvt-21", 384, "in1k", "CvT-21-384x384-IN-1k.pth", 83.3),
        _released("cvt-13-384-22k", "cvt-13", 384, "in22k-ft-in1k", "CvT-13-384x384-IN-22k.pth", 83.3),
        _released("cvt-21-384-22k", "cvt-21", 384, "in22k-ft-in1k", "CvT-21-384x384-IN-22k.pth", 84.9),
        _released("cvt-w24-384-22k", "cvt-w24", 384, "in22k-ft-in1k", "CvT-w24-384x384-IN-22k.pth", 87.7),
    )
}


def list_models(pretrained: bool = False) -> list[str]:
    """Every name :func:`get_config` accepts (only checkpoint names with ``pretrained=True``)."""
    names = set(CHECKPOINTS) if pretrained else set(ARCHITECTURES) | set(CHECKPOINTS)
    return sorted(names)


def get_checkpoint(name: str) -> Checkpoint | None:
    """The released checkpoint of that name, or ``None`` (an architecture-only name, or unknown)."""
    return CHECKPOINTS.get(name.lower())


@dataclass(frozen=True)
class WeightSource:
    """Where a model's weights come from, for a name and an optional weight path (:func:`weight_source`)."""

    name: str | None  # a registry name (architecture or released checkpoint), or None
    weights: str | os.PathLike[str] | None  # a local file or directory, or a hub id (hf://owner/repo[@revision])
    pretrained: bool  # download the released checkpoint ``name``

    @property
    def has_weights(self) -> bool:
        """False for an architecture name alone (random initialisation)."""
        return self.weights is not None or self.pretrained


def weight_source(name: str | None, weights: str | os.PathLike[str] | None = None) -> WeightSource:
    """The one rule from "a name and maybe a path" to how to load, for every verb and front-end.

    A registry name wins; a name that is not one but an existing path is read as weights; a released checkpoint
    name without ``weights`` means its released weights (downloaded once, cached); an architecture name without
    ``weights`` has none. A hub id name (``hf-hub:owner/repo[@rev]``, ``hf://...``) is weights (read by
    :func:`cvt.core.weights.resolve`, which downloads them). A name that is none of these raises
    :class:`UnknownModelError` (naming the known ones; a bare ``owner/repo`` is told how to write it as a hub id).
    """
    from .hub import hub_hint, parse_hub_id

    if name is not None and parse_hub_id(name) is not None:  # (a malformed one: WeightsError, before any download)
        if weights is not None:
            raise UsageError(f"{name}: a hub id as the model name is the weights already; do not also give weights")
        return WeightSource(None, name, False)
    known = name is not None and name.lower() in {*CHECKPOINTS, *ARCHITECTURES}
    if name is not None and weights is None and not known and Path(name).exists():
        return WeightSource(None, name, False)
    if name is not None:
        hint = None if known else hub_hint(name)
        if hint is not None:
            raise UnknownModelError(f"unknown model {name!r}; {hint}")
        get_config(name)  # UnknownModelError for a misspelt name, before anything is read
    return WeightSource(name, weights, weights is None and name is not None and get_checkpoint(name) is not None)


def get_config(name: str) -> CvTConfig:
    """The architecture for an architecture or checkpoint name (checkpoint names set ``img_size``)."""
    key = name.lower()
    if key in CHECKPOINTS:
        released = CHECKPOINTS[key]
        return ARCHITECTURES[released.arch].replace(name=released.name, img_size=released.img_size)
    if key in ARCHITECTURES:
        return ARCHITECTURES[key]
    raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(list_models())}")


def default_spec(config: CvTConfig) -> PretrainedSpec:
    """The spec of a checkpoint name, else the released checkpoints' rule for the config's size."""
    released = get_checkpoint(config.name)
    if released is not None and released.img_size == config.img_size:
        return released.spec
    return PretrainedSpec(preprocess=EvalPreprocess.for_size(config.img_size))


def infer_config(sd: Mapping[str, Any], base: CvTConfig | None = None) -> CvTConfig:
    """Recover the architecture from a native state dict's shapes (values: any array with ``.shape``).

    Widths, depths, kernels, cls tokens, projection methods and the class count are read off the tensors;
    the number of heads is not stored in weights, so it comes from ``base`` when the widths agree, else
    from a registered architecture with the same widths, else ``width // 64`` (every released CvT uses
    64-wide heads).
    """
    stage_ids = sorted({int(k.split(".")[1]) for k in sd if k.startswith("stages.")})
    if not stage_ids:
        raise WeightsError("state dict has no stages")
    candidates = ([base] if base is not None else []) + list(ARCHITECTURES.values())
    stages = []
    for i in stage_ids:
        p, b0 = f"stages.{i}.", f"stages.{i}.blocks.0."
        dim, _, kernel, _ = sd[p + "patch_embed.proj.weight"].shape
        observed: dict[str, Any] = dict(
            embed_dim=dim,
            depth=1 + max(int(k.split(".")[3]) for k in sd if k.startswith(p + "blocks.")),
            patch_size=kernel,
            mlp_ratio=sd[b0 + "mlp.fc1.weight"].shape[0] / dim,
            qkv_bias=b0 + "attn.proj_q.bias" in sd,
            cls_token=p + "cls_token" in sd,
        )
        if b0 + "attn.conv_proj_k.conv.weight" in sd:  # avg / linear projections leave no weights
            observed.update(qkv_proj_method="dw_bn", kernel_qkv=sd[b0 + "attn.conv_proj_k.conv.weight"].shape[-1])
        # heads, strides and paddings are not in the weights: take them from an architecture of the same width
        ref = next((c.stages[i] for c in candidates if i < len(c.stages) and c.stages[i].embed_dim == dim), None)
        if ref is not None:
            stages.append(dataclasses.replace(ref, **observed))
        else:
            stem = {"patch_stride": 4, "patch_padding": 2} if kernel == 7 else {}  # the official 7x7 stem
            stages.append(StageConfig(num_heads=max(1, dim // 64), **stem, **observed))
    shape = [(s.embed_dim, s.depth) for s in stages]
    name = next(
        (n for n, a in ARCHITECTURES.items() if [(s.embed_dim, s.depth) for s in a.stages] == shape),
        base.name if base is not None else "custom",
    )
    kwargs: dict[str, Any] = {
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        "in_chans": sd[f"stages.{stage_ids[0]}.patch_embed.proj.weight"].shape[1],
        "name": name,
    }
    if base is not None:
        kwargs.update(activation=base.activation, img_size=base.img_size)
    return CvTConfig(stages=tuple(stages), **kwargs)
