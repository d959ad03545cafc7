"""keras-hub's preset directories for the Keras CvT: ``save_to_preset`` and ``from_preset``.

Layout (keras-hub's, so its tools and hubs see what they expect; the files are described in
:mod:`cvt.core.kerasfile`): ``config.json`` (the serialized ``cvt>CvTBackbone``), ``metadata.json``,
``model.weights.h5`` (Keras' own ``save_weights`` of the backbone), and for a classifier ``task.json``,
``task.weights.h5`` (the final norm and head: Keras' ``save_weights`` skipping the backbone, as keras-hub's
``save_task_weights``) and ``preprocessor.json`` (the serialized ``cvt>CvTImagePreprocessor``: preprocessing and
labels). The directory is written aside, read back by the framework-free reader and compared with the model bit
for bit, then published atomically (:func:`cvt.core.files.atomic_write_dir`).

Loading goes through the core like every weight source (:func:`cvt.core.weights.read_arrays` reads a preset), so a
preset also loads in PyTorch (``cvt.create_model(weights=preset_dir)``) and Flax, and ``from_preset`` takes
registry names, weight files and hub ids (``hf://owner/repo``) as well. keras-hub itself is not needed (and its
``Backbone.from_preset`` does not load these: our classes are plain ``keras.Model`` subclasses).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ..core import kerasfile
from ..core.errors import CvtError
from ..core.files import KERAS_PRESET, atomic_write_dir, check_suffix
from ..core.presets import weight_source
from ..core.spec import EvalPreprocess, PretrainedSpec
from ..core.weights import resolve, with_overrides
from .backbone import CvTBackbone
from .classifier import CvTImageClassifier
from .preprocessor import CvTImagePreprocessor
from .weights import CREATE_KEYWORDS, build_model, check_keywords, create_model, state_dict

TASKS = ["ImageClassifier"]  # keras-hub's task base classes a CvT backbone serves (metadata.json "tasks")
BACKBONE_KEYWORDS = ("activation", "data_format", "load_weights", "dtype")


def _serialize(obj: Any) -> dict[str, Any]:
    """``keras.saving.serialize_keras_object`` without ``compile_config`` / ``build_config`` (keras-hub drops them:
    a preset describes a model, not a training run)."""

    def strip(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("compile_config", "build_config")}
        if isinstance(d, list):
            return [strip(v) for v in d]
        return d

    return strip(keras.saving.serialize_keras_object(obj))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


def _preprocessor(model: CvTImageClassifier) -> CvTImagePreprocessor:
    if model.preprocessor is not None:
        return model.preprocessor
    spec = model.pretrained_cfg or PretrainedSpec(EvalPreprocess.for_size(model.cvt_config.img_size))
    return CvTImagePreprocessor(spec, model.backbone.data_format)


def _cvt_version() -> str:
    from .. import __version__

    return __version__


def save_to_preset(model: CvTBackbone | CvTImageClassifier, preset_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a keras-hub preset directory (module docstring) and return its path.

    An existing directory keeps its other files; the preset's files are replaced atomically, and only in a
    directory that already is a ``cvt.keras`` preset (a ``config.json`` of another model there is refused,
    :data:`cvt.core.files.KERAS_PRESET`); a name with a file suffix (``x.keras``) is refused. Raises
    :class:`~cvt.core.errors.WriteError` (one line) when the directory cannot be written, and
    :class:`~cvt.core.errors.CvtError` if the files read back differ from the model (nothing is published then).
    """
    check_suffix(preset_dir, (), "a preset")
    backbone = model if isinstance(model, CvTBackbone) else model.backbone
    task = isinstance(model, CvTImageClassifier)

    def write(tmp: Path) -> None:
        _write_json(tmp / kerasfile.CONFIG_FILE, _serialize(backbone))
        backbone.save_weights(str(tmp / kerasfile.MODEL_WEIGHTS_FILE))
        meta = kerasfile.metadata(keras.version(), _cvt_version(), backbone.count_params(), TASKS)
        _write_json(tmp / kerasfile.METADATA_FILE, meta)
        if task:
            _write_json(tmp / kerasfile.TASK_FILE, _serialize(model))
            # the variables outside the backbone (final norm, head), as keras-hub's Task.save_task_weights
            keras.saving.save_weights(model, str(tmp / kerasfile.TASK_WEIGHTS_FILE), objects_to_skip=[backbone])
            _write_json(tmp / kerasfile.PREPROCESSOR_FILE, _serialize(_preprocessor(model)))

    def check(tmp: Path) -> None:
        arrays, *_ = kerasfile.read_preset(tmp)
        want = state_dict(model) if task else state_dict(backbone)
        bad = sorted(set(arrays) ^ set(want)) or [
            k
            for k, v in want.items()
            if not np.array_equal(np.asarray(arrays[k]), np.asarray(v, dtype=arrays[k].dtype))
        ]
        if bad:
            raise CvtError(f"{preset_dir}: the preset does not read back as the model (first: {bad[0]}); not written")

    return atomic_write_dir(preset_dir, write, check=check, kind=KERAS_PRESET)


def _preset_dir(preset: Any) -> Path | None:
    if isinstance(preset, (str, os.PathLike)):
        path = Path(preset)
        if path.is_dir() and kerasfile.is_preset(path):
            return path
    return None


def from_preset(
    preset: str | os.PathLike[str], load_weights: bool = True, dtype: Any = None, **kwargs: Any
) -> CvTImageClassifier:
    """keras-hub's ``from_preset`` for the classifier (``classifier.preprocessor`` attached).

    Args:
        preset: a ``cvt.keras`` preset directory (its data format, pooling and classifier activation are kept
            unless given), a registry name (``"cvt-13-384-22k"``: downloaded once; ``"cvt-13"`` architecture),
            any weight file or directory the core reads, or a hub id (``hf://owner/repo[@revision]``).
        load_weights: ``False``: the architecture only, randomly initialised (nothing is downloaded for a
            registry name).
        dtype: a Keras dtype policy name (``"float32"``, ``"bfloat16"``, ``"mixed_bfloat16"`` ...); ``None``: the
            global policy.
        **kwargs: :func:`cvt.keras.create_model`'s (``num_classes``, ``activation``, ``data_format``,
            ``classifier_activation``, ``pooling``, ``img_size`` ...); any other is one
            :class:`~cvt.core.errors.UsageError` line listing the accepted ones.
    """
    check_keywords("cvt.keras.from_preset", kwargs, CREATE_KEYWORDS)
    path = _preset_dir(preset)
    if path is None:
        source = weight_source(os.fspath(preset))
        return create_model(
            source.name,
            weights=source.weights,
            pretrained=source.pretrained,
            load_weights=load_weights,
            dtype=dtype,
            **kwargs,
        )
    config, spec, settings = kerasfile.read_preset_config(path)
    saved = {
        "data_format": settings.get("data_format"),
        "pooling": settings.get("pooling"),
        "classifier_activation": settings.get("activation"),
    }
    kwargs = {**{k: v for k, v in saved.items() if v is not None}, **kwargs}
    loaded = None
    if load_weights:  # a backbone preset lacks the final norm: fitted against the backbone when assigned
        config, spec, loaded = resolve(None, weights=path, strict=settings["task"])
    build = {k: kwargs.pop(k) for k in ("data_format", "classifier_activation", "pooling") if k in kwargs}
    num_classes, activation = kwargs.pop("num_classes", None), kwargs.pop("activation", None)
    spec = spec or PretrainedSpec(EvalPreprocess.for_size(config.img_size))
    config, spec = with_overrides(config, spec, loaded, num_classes=num_classes, activation=activation, **kwargs)
    return build_model(config, spec, loaded, dtype=dtype, **build)


def backbone_from_preset(
    preset: str | os.PathLike[str], load_weights: bool = True, dtype: Any = None, **kwargs: Any
) -> CvTBackbone:
    """keras-hub's ``Backbone.from_preset``: the stages of :func:`from_preset`'s model (``activation``,
    ``data_format`` and config overrides such as ``img_size`` accepted; any other keyword is one line)."""
    check_keywords("CvTBackbone.from_preset", kwargs, BACKBONE_KEYWORDS)
    model = from_preset(preset, load_weights=load_weights, dtype=dtype, num_classes=0, **kwargs)
    model.backbone.load_report = model.load_report
    return model.backbone
