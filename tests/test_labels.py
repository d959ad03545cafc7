"""``LabelSet`` (names, named sets, the placeholder rule, head size), the file formats it must keep, and the
framework-free evaluation of a folder by class name (:mod:`cvt.core.classes`, :mod:`cvt.core.evaluation`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cvt
from cvt.core.classes import eval_samples, read_eval_folder
from cvt.core.config import hf_labels
from cvt.core.errors import ConfigError, DataError, UsageError
from cvt.core.evaluation import evaluate_folder
from cvt.core.labels import (
    IMAGENET_1K,
    LabelSet,
    imagenet_labels,
    is_placeholder,
    placeholders,
    resolve_labels,
    shown_names,
)
from cvt.core.native import decode_metadata, encode_metadata
from cvt.core.spec import EvalPreprocess, PretrainedSpec


def test_a_label_set_is_its_names_or_a_named_set():
    pets = LabelSet.parse(["cat", "dog"])
    assert pets.names == ("cat", "dog") and pets.inline and len(pets) == 2 and pets[1] == "dog" and list(pets)
    assert LabelSet.parse(("cat", "dog")) == pets and LabelSet.parse(pets) is pets
    imagenet = LabelSet.parse(IMAGENET_1K)
    assert imagenet.source == IMAGENET_1K and not imagenet.inline and imagenet.names == tuple(imagenet_labels())
    assert LabelSet.parse(None) is None and LabelSet.parse([]) is None  # no names
    with pytest.raises(ConfigError, match="labels: unknown label set 'imagenet-21k'"):
        LabelSet.parse("imagenet-21k")
    with pytest.raises(ConfigError, match="expected a list of class names"):
        LabelSet.parse(5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="are not the set 'imagenet-1k'"):
        LabelSet(("cat", "dog"), source=IMAGENET_1K)  # it would be written as "imagenet-1k"
    assert "1000" not in repr(imagenet) and repr(pets) == "LabelSet(names=('cat', 'dog'))"


@pytest.mark.parametrize(
    "labels, stored",
    [(["cat", "dog"], ["cat", "dog"]), (IMAGENET_1K, IMAGENET_1K), (None, None), (("0", "1"), ["0", "1"])],
)
def test_spec_json_is_what_it_was(labels, stored):
    """The spec JSON (in native files' metadata, Keras configs) keeps its shape: a list, the set's name, or null."""
    spec = PretrainedSpec(EvalPreprocess(img_size=48), labels=labels, license="MIT", source="t")
    d = spec.to_dict()
    assert d == {"preprocess": EvalPreprocess(img_size=48).to_dict(), "labels": stored, "license": "MIT", "source": "t"}
    assert PretrainedSpec.from_dict(json.loads(json.dumps(d))) == spec
    classes = len(spec.labels) if spec.labels is not None else 10  # a file's names fit its head (the --labels rule)
    meta = encode_metadata(cvt.get_config("cvt-tiny").replace(num_classes=classes), spec)
    assert meta["spec"] == json.dumps(d)  # the same bytes as the 0.2 writer's json.dumps(dict)
    assert decode_metadata(meta)[1] == spec


def test_files_written_before_the_spec_keep_their_labels():
    config = {**cvt.get_config("cvt-tiny").to_dict(), "extra": {"labels": ["a", "b"], "preprocess": {"img_size": 40}}}
    spec = decode_metadata({"config": json.dumps(config)})[1]
    assert spec.labels == LabelSet(("a", "b")) and spec.preprocess.img_size == 40


def test_the_one_placeholder_rule():
    assert is_placeholder("LABEL_3", 3) and is_placeholder("class_3", 3)
    assert not is_placeholder("LABEL_3", 2) and not is_placeholder("3", 3) and not is_placeholder("cat", 0)
    assert LabelSet(tuple(placeholders(3, "LABEL_{}"))).placeholder and LabelSet(tuple(placeholders(3))).placeholder
    digits = LabelSet(tuple(str(i) for i in range(10)))
    assert not digits.placeholder and digits.index_only  # real names to show, but no meaning to match folders by
    assert not LabelSet(("cat", "dog")).index_only
    # every reader applies it: HF's id2label, the names shown
    assert hf_labels({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}) is None
    assert hf_labels({"id2label": {"0": "class_0", "1": "class_1"}}) is None
    assert hf_labels({"id2label": {"1": "1", "0": "0"}}) == ("0", "1")
    assert resolve_labels(2, ["LABEL_0", "LABEL_1"]) == ["class_0", "class_1"]
    assert resolve_labels(3, ("0", "1", "2")) == ["0", "1", "2"]  # the digits model shows its digits
    assert cvt.get_config("cvt-tiny").replace(num_classes=2).to_hf_config()["id2label"] == {
        "0": "LABEL_0",
        "1": "LABEL_1",
    }


def test_names_of_another_head_size_no_longer_apply():
    pets = LabelSet(("cat", "dog", "fox"))
    assert pets.for_head(3) is pets and pets.for_head(2) is None and pets.for_head(0) is None
    assert LabelSet.named(IMAGENET_1K).for_head(10) is None
    spec = PretrainedSpec(labels=pets)
    assert (
        spec.for_head(3) is spec and spec.for_head(5).labels is None and spec.for_head(5).preprocess == spec.preprocess
    )
    assert shown_names(pets, 2) == ["class_0", "class_1"] and shown_names(pets, 1000) == imagenet_labels()
    assert resolve_labels(1000, LabelSet.named(IMAGENET_1K))[281] == "tabby, tabby cat"


def test_lookup_maps_folder_names_to_classes_by_name():
    pets = LabelSet(("cat", "dog", "fox"))
    assert pets.lookup(["fox", "cat"]) == {"fox": 2, "cat": 0}
    assert pets.lookup(["fox", "wolf"]) is None
    with pytest.raises(
        DataError, match=r"class folders: 'crane' names more than one of the model's classes \(134, 517\)"
    ):
        LabelSet.named(IMAGENET_1K).lookup(["crane"])


# ---------------------------------------------------------------------------- a folder, without a framework
def _folder(root: Path, classes: dict[str, int]) -> Path:
    """``root/<class>/<i>.png``: image ``i`` of a class is grey level ``16 * i + 1`` (the fake model reads it)."""
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (20 + i, 18), (16 * i + 1,) * 3).save(root / name / f"{i}.png")
    return root


def test_a_folder_is_scored_by_class_name(tmp_path):
    """A fake 3-class model that answers class 2 ("fox") for every image: by name, fox's images are right."""
    folder = _folder(tmp_path / "pets", {"fox": 2, "dog": 3})
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    config = cvt.get_config("cvt-tiny").replace(num_classes=3)
    spec = PretrainedSpec(EvalPreprocess(img_size=8, crop_pct=1.0), labels=("cat", "dog", "fox"))
    shapes = []

    def forward(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return np.tile([0.0, 1.0, 2.0], (len(x), 1))  # fox first, dog second

    score = evaluate_folder(forward, folder, config, spec, batch_size=3)
    assert (score.n, score.top1_hits, score.top5_hits) == (5, 2, 5) and score.top1 == pytest.approx(0.4)
    assert score.mapping == {"fox": 2, "dog": 1} and score.mapping.rule == "labels" and score.classes[2] == "fox"
    assert len(score.skipped) == 1 and score.skipped[0].startswith(str(folder / "dog" / "broken.png"))
    assert shapes == [(3, 8, 8, 3), (2, 8, 8, 3)]  # channels last, batches of 3
    evaluate_folder(forward, folder, config, spec, channels_last=False)
    assert shapes[-1] == (5, 3, 8, 8)


def test_a_folder_that_is_not_the_model_classes_fails_as_cvt_eval_does(tmp_path):
    folder = _folder(tmp_path / "zoo", {"dog": 1, "wolf": 1})
    config = cvt.get_config("cvt-tiny").replace(num_classes=3)
    spec = PretrainedSpec(labels=("cat", "dog", "fox"))
    with pytest.raises(DataError) as e:
        evaluate_folder(lambda x: np.zeros((len(x), 3)), folder, config, spec)
    assert str(e.value).startswith(f"{folder}: class folders: 1 of 2 match none of the model's labels: wolf")
    with pytest.raises(DataError, match="no such file or directory"):
        evaluate_folder(lambda x: x, tmp_path / "nowhere", config, spec)
    with pytest.raises(UsageError, match="no classifier head"):
        evaluate_folder(lambda x: x, folder, config.replace(num_classes=0), spec)
    with pytest.raises(UsageError, match=r"forward gave shape \(2, 4\)"):
        evaluate_folder(lambda x: np.zeros((len(x), 4)), _folder(tmp_path / "ok", {"dog": 2}), config, spec)


def test_a_data_root_is_evaluated_on_its_val_split(tmp_path):
    _folder(tmp_path / "root" / "val", {"0": 1, "2": 2})
    (tmp_path / "root" / "train").mkdir()
    found = read_eval_folder(tmp_path / "root")
    assert found.where == str(tmp_path / "root" / "val") and found.names == ["0", "2"] and found.kind == "folder"
    mapped = eval_samples(found, 3)
    assert mapped.mapping.rule == "index" and sorted(y for _, y in mapped.samples) == [0, 2, 2]
    assert mapped.classes == ["0", "1", "2"]


def test_the_framework_free_modules_import_no_framework():
    """``cvt.data.sources`` (the digits split the Keras and Flax examples use) and the core's evaluation need no
    torch, TensorFlow or JAX: they import and run with those made unimportable."""
    code = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "tensorflow", "keras", "jax", "flax"}:
            raise ImportError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _Block())
import cvt.core.classes, cvt.core.evaluation, cvt.data.sources
train, held_out = cvt.data.sources.digits_split()
print(len(train), len(held_out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1437", "360"]


def test_training_targets_follow_one_rule_in_every_front_end():
    """Integer class indices in [0, K): floats, bools and out-of-range indices are one DataError line (the rule
    cvt.train's loop, cvt.flax.train and cvt.keras' fit all call)."""
    import numpy as np
    import torch

    from cvt.core.errors import DataError
    from cvt.core.labels import check_class_indices

    check_class_indices(np.array([0, 9]), 10)
    check_class_indices(torch.tensor([3, 4]), 10)
    for bad, words in (([0, 10], "10 is out of range"), ([-5], "-5 is out of range"), ([0.5], "dtype float64")):
        with pytest.raises(DataError, match=words):
            check_class_indices(np.array(bad), 10)
    with pytest.raises(DataError, match="dtype bool"):
        check_class_indices(np.array([True]), 10)
