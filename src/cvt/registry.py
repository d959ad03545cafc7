"""Named architectures and released checkpoints.

Architectures (``cvt-13``, ``cvt-21``, ``cvt-w24``, ``cvt-tiny``) are :class:`~cvt.config.CvTConfig` values.
Checkpoints (the seven released by Microsoft) pair an architecture with a resolution, its preprocessing and
where its weights live; ``cvt-13`` and ``cvt-21`` name both the architecture and its 224 checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CvTConfig, StageConfig


def _official(name: str, dims: tuple[int, int, int], heads: tuple[int, int, int], depths: tuple[int, int, int],
              drop_path: float) -> CvTConfig:  # fmt: skip
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
    # Not a released model: a 0.1M-parameter CvT for tests and CPU demos (same structure, tiny widths).
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
}


@dataclass(frozen=True)
class Checkpoint:
    """A released checkpoint: where it lives and how its inputs must be prepared."""

    name: str
    arch: str
    img_size: int
    pretrain: str  # "in1k" or "in22k-ft-in1k"
    hf_repo: str  # converted copy on the HF hub (Apache-2.0 model cards)
    official_file: str  # name in the official OneDrive model zoo (MIT)
    top1: float  # paper Table 3, ImageNet-1k val top-1
    crop_pct: float  # 0.875: resize short side to size/crop_pct, centre crop; 1.0: squash to size x size
    labels: str = "imagenet-1k"
    license: str = "MIT (official weights); Apache-2.0 (HF hub copies)"


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint("cvt-13", "cvt-13", 224, "in1k", "microsoft/cvt-13", "CvT-13-224x224-IN-1k.pth", 81.6, 0.875),
        Checkpoint("cvt-13-384", "cvt-13", 384, "in1k", "microsoft/cvt-13-384", "CvT-13-384x384-IN-1k.pth", 83.0, 1.0),
        Checkpoint("cvt-21", "cvt-21", 224, "in1k", "microsoft/cvt-21", "CvT-21-224x224-IN-1k.pth", 82.5, 0.875),
        Checkpoint("cvt-21-384", "cvt-21", 384, "in1k", "microsoft/cvt-21-384", "CvT-21-384x384-IN-1k.pth", 83.3, 1.0),
        Checkpoint(
            "cvt-13-384-22k", "cvt-13", 384, "in22k-ft-in1k", "microsoft/cvt-13-384-22k",
            "CvT-13-384x384-IN-22k.pth", 83.3, 1.0,
        ),
        Checkpoint(
            "cvt-21-384-22k", "cvt-21", 384, "in22k-ft-in1k", "microsoft/cvt-21-384-22k",
            "CvT-21-384x384-IN-22k.pth", 84.9, 1.0,
        ),
        Checkpoint(
            "cvt-w24-384-22k", "cvt-w24", 384, "in22k-ft-in1k", "microsoft/cvt-w24-384-22k",
            "CvT-w24-384x384-IN-22k.pth", 87.7, 1.0,
        ),
    )
}  # fmt: skip


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def list_models(pretrained: bool = False) -> list[str]:
    """Every name :func:`get_config` accepts (only checkpoint names with ``pretrained=True``)."""
    names = set(CHECKPOINTS) if pretrained else set(ARCHITECTURES) | set(CHECKPOINTS)
    return sorted(names)


def get_checkpoint(name: str) -> Checkpoint | None:
    return CHECKPOINTS.get(name.lower())


def get_config(name: str) -> CvTConfig:
    """The architecture for an architecture or checkpoint name (checkpoint names set ``img_size``)."""
    key = name.lower()
    if key in CHECKPOINTS:
        ckpt = CHECKPOINTS[key]
        return ARCHITECTURES[ckpt.arch].replace(name=ckpt.name, img_size=ckpt.img_size)
    if key in ARCHITECTURES:
        return ARCHITECTURES[key]
    raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(list_models())}")
