"""The model card (``README.md``) of an exported Hugging Face directory. Framework-free.

:func:`model_card` writes the hub's metadata as YAML front matter (``library_name: transformers``, ``pipeline_tag:
image-classification``, ``license``, ``tags``, ``datasets``), then what the model is, where its weights come from,
its architecture, its preprocessing, how to run it with transformers and with cvt, and which activation the
weights need and why.

A card we write carries :data:`MARK` on the line after the front matter. Exporters replace a ``README.md`` that
carries it and keep any other (a user's own card): :func:`is_ours`. Deleting the line keeps a card's edits.
"""

from __future__ import annotations

import re
from importlib import metadata

import yaml

from .config import CvTConfig
from .labels import IMAGENET_1K
from .macs import count_macs, count_params
from .presets import get_checkpoint
from .spec import EvalPreprocess, PretrainedSpec

MARK = "<!-- written by cvt-models: exports replace this file; delete this line to keep your edits -->"
TAGS = ("cvt", "image-classification", "vision")
# hub licence ids (https://huggingface.co/docs/hub/repositories-licenses) that a spec's licence text may name
HUB_LICENSES = (
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "mpl-2.0", "openrail", "unlicense", "other",
)  # fmt: skip
_APACHE = re.compile(r"apache(?: license)?,?[ -]?(?:v|version )?2(?:\.0)?(?![.\d])")  # "Apache 2.0", "apache-2" ...
PAPER = "https://arxiv.org/abs/2103.15808"
PLACEHOLDER_REPO = "owner/name"  # what the usage snippets say where the hub id goes


def is_ours(text: str) -> bool:
    """Whether a ``README.md`` is a card cvt wrote (carries :data:`MARK`), so an export may replace it."""
    return MARK in text


def hub_license(text: str) -> tuple[str | None, str | None]:
    """``(hub licence id, license_name)`` for a spec's licence text; ``(None, None)`` when none is recorded.

    The first licence the text names wins: ``"MIT (official weights); Apache-2.0 (HF hub copies)"`` (the released
    checkpoints: Microsoft published the weights under MIT) is ``mit``. Text naming no hub id is ``other`` with a
    ``license_name`` slug, as the hub asks.
    """
    norm = " ".join(text.lower().split())
    if not norm:
        return None, None
    norm = _APACHE.sub("apache-2.0", norm)
    first = re.split(r"[\s(;,]", norm, maxsplit=1)[0]
    if first in HUB_LICENSES:
        return first, None
    return "other", re.sub(r"[^a-z0-9]+", "-", norm).strip("-")[:64] or "custom"


def model_card(
    config: CvTConfig, spec: PretrainedSpec, *, activation: str | None = None, repo_id: str = PLACEHOLDER_REPO
) -> str:
    """The ``README.md`` text for an HF directory of a model of ``config`` with ``spec``.

    ``activation``: what the weights are meant to run with (default ``config.activation``). ``repo_id``: the hub
    id the usage snippets show.
    """
    activation = activation or config.activation
    parts = [
        _front_matter(spec),
        MARK,
        "",
        f"# {config.name}",
        "",
        _summary(config, spec),
        _architecture(config),
        _preprocessing(spec.preprocess),
        _activation(config, activation),
        _usage(config, activation, repo_id),
    ]
    return "\n".join(parts).rstrip() + "\n"


def _front_matter(spec: PretrainedSpec) -> str:
    meta: dict[str, object] = {"library_name": "transformers", "pipeline_tag": "image-classification"}
    license_id, license_name = hub_license(spec.license)
    if license_id is not None:
        meta["license"] = license_id
    if license_name is not None:
        meta["license_name"] = license_name
    meta["tags"] = list(TAGS)
    if spec.labels is not None and spec.labels.source == IMAGENET_1K:
        meta["datasets"] = [IMAGENET_1K]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def _version() -> str:
    try:
        return metadata.version("cvt-models")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "(source tree)"


def _summary(config: CvTConfig, spec: PretrainedSpec) -> str:
    labels = spec.labels
    if labels is None or labels.placeholder:
        classes = f"{config.num_classes} classes (no class names recorded: `LABEL_<i>`)"
    elif labels.source:
        classes = f"the {config.num_classes} {labels.source} classes"
    else:
        shown = ", ".join(f"`{n}`" for n in labels[:5]) + (", ..." if len(labels) > 5 else "")
        classes = f"{config.num_classes} classes ({shown})"
    lines = [
        f"A CvT (Convolutional vision Transformer, Wu et al. 2021, [arXiv:2103.15808]({PAPER})) image classifier for "
        f"{classes}, in the layout of transformers' `CvtForImageClassification`. Written by cvt-models {_version()}.",
        "",
        f"- **Source of the weights:** {spec.source or 'not recorded'}",
        f"- **Licence:** {spec.license or 'not recorded (add one before publishing)'}",
    ]
    released = get_checkpoint(config.name)
    if released is not None and spec.source == released.spec.source:
        pretrain = {"in1k": "ImageNet-1k", "in22k-ft-in1k": "ImageNet-22k, fine-tuned on ImageNet-1k"}
        lines.append(
            f"- **Released checkpoint** `{released.name}` ({released.official_file}): trained on "
            f"{pretrain.get(released.pretrain, released.pretrain)} at {released.img_size}x{released.img_size}; "
            f"the paper reports {released.top1}% ImageNet-1k top-1."
        )
    return "\n".join(lines) + "\n"


def _architecture(config: CvTConfig) -> str:
    rows = [
        "## Architecture",
        "",
        "| stage | width | depth | heads | stride | cls token |",
        "|---|---|---|---|---|---|",
    ]
    for i, (s, r) in enumerate(zip(config.stages, config.reductions)):
        rows.append(f"| {i} | {s.embed_dim} | {s.depth} | {s.num_heads} | {r} | {'yes' if s.cls_token else 'no'} |")
    size = config.img_size
    rows += [
        "",
        f"{count_params(config) / 1e6:.2f} M parameters, {count_macs(config, size, size) / 1e9:.2f} GMACs at "
        f"{size}x{size}, {config.num_classes} classes, {config.in_chans} input channels.",
        "",
    ]
    return "\n".join(rows)


def _preprocessing(pre: EvalPreprocess) -> str:
    s, interp = pre.img_size, pre.interpolation
    if pre.crop_pct < 1.0:
        geometry = (
            f"Resize the short side to {int(s / pre.crop_pct)} ({interp}, keeping the aspect ratio), then "
            f"centre-crop {s}x{s} (crop_pct {pre.crop_pct})"
        )
    else:
        geometry = f"Resize to {s}x{s} ({interp}, ignoring the aspect ratio), no crop"
    return "\n".join([
        "## Preprocessing",
        "",
        f"{geometry}; scale to [0, 1]; normalise with mean {list(pre.mean)} and std {list(pre.std)}. "
        "`preprocessor_config.json` spells this for transformers' image processor. (transformers floors the "
        "centre-crop offset where the official evaluation rounds it: on some photos its crop sits one pixel "
        "off.)",
        "",
    ])  # fmt: skip


def _activation(config: CvTConfig, activation: str) -> str:
    released = get_checkpoint(config.name) is not None
    if activation == "quick_gelu":
        text = (
            "These weights need **quick_gelu** (`x * sigmoid(1.702 x)`): they were trained with it, as the official "
            "microsoft/CvT code computes. transformers' CvT computes exact (erf) GELU, so its logits differ "
            "slightly from the official model's (rankings rarely change; the released checkpoints on the hub have "
            'the same caveat). cvt runs either function exactly: `activation="quick_gelu"` gives the official '
            "numbers."
        )
    else:
        text = (
            "These weights run with exact (erf) **GELU**, which is what transformers computes: transformers and "
            "cvt give the same logits (to float precision)."
        )
        if released:
            text += (
                " The released CvT checkpoints were trained with quick_gelu; this export chose GELU, so its "
                'outputs differ slightly from the official model\'s (cvt: `activation="quick_gelu"` restores them).'
            )
    return "\n".join(["## Activation", "", text, ""])


def _usage(config: CvTConfig, activation: str, repo_id: str) -> str:
    cli_note = []
    if activation == "quick_gelu":
        py = 'model = cvt.create_model(weights="path/to/this/directory", activation="quick_gelu")'
        # a released checkpoint's name makes every verb run quick_gelu; an HF directory alone reads as exact GELU
        cli_extra = f" --model {config.name}" if get_checkpoint(config.name) is not None else ""
        if not cli_extra:
            cli_note = ["# runs exact GELU (as transformers): the Python line above gives quick_gelu"]
    else:
        py = 'model = cvt.create_model(weights="path/to/this/directory")  # reads exact GELU from an HF directory'
        cli_extra = ""
    return "\n".join([
        "## Usage",
        "",
        "With transformers:",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'classify = pipeline("image-classification", model="{repo_id}")  # or the local directory',
        'print(classify("photo.jpg", top_k=5))',
        "```",
        "",
        "With cvt (`pip install 'cvt-models[torch]'`) on a local copy of this directory:",
        "",
        "```python",
        "import cvt",
        "",
        py,
        "```",
        "",
        "```bash",
        *cli_note,
        f"cvt predict photo.jpg --weights path/to/this/directory{cli_extra} --topk 5",
        "```",
        "",
    ])  # fmt: skip
