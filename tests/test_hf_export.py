"""The pipeline-ready Hugging Face export (``cvt.save_pretrained``, ``cvt convert --to hf``): processor file, class
names, model card, file modes; transformers' own ``pipeline`` and ``AutoImageProcessor`` as the peers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import cvt
from conftest import randomize_norms
from cvt.cli import main
from cvt.core.errors import ConversionError
from cvt.core.files import atomic_write_dir
from cvt.core.labels import imagenet_labels
from cvt.core.modelcard import MARK
from cvt.core.preprocess import resized_size
from cvt.core.spec import EvalPreprocess
from cvt.data.transforms import build_eval_transform
from cvt.torch.weights import save_native
from test_transforms import PHOTOS, photo_paths

# real-looking names for the tiny model's 10 classes
NAMES = ["tabby cat", "golden retriever", "espresso", "space shuttle", "daisy", "astronaut", "teapot", "red fox",
         "sunflower", "pagoda"]  # fmt: skip
SQUASH64 = EvalPreprocess(img_size=64, crop_pct=1.0)
CROP64 = EvalPreprocess(img_size=64, crop_pct=0.875)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def tiny(pre: EvalPreprocess = CROP64, labels=NAMES, scale: float = 25.0) -> cvt.CvT:
    """A random cvt-tiny running exact GELU (what transformers computes), norms randomised, its head scaled so
    that the probabilities of the top classes differ clearly (a stable top-5 order)."""
    model = randomize_norms(cvt.create_model("cvt-tiny", activation="gelu")).eval()
    with torch.no_grad():
        model.head.weight.mul_(scale)
    model.pretrained_cfg = model.pretrained_cfg.replace(preprocess=pre, labels=labels)
    return model


def cli(*argv: object) -> subprocess.CompletedProcess[str]:
    """The real command line, in a fresh interpreter (``python -m cvt``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cvt", *map(str, argv)], capture_output=True, text=True, env=env)


def same_crop_as_transformers(path: Path, pre: EvalPreprocess) -> bool:
    """transformers floors the centre-crop offset where the official evaluation rounds it (README): the photos
    on which both crop the same pixels."""
    if pre.crop_pct >= 1.0:
        return True
    w, h = resized_size(Image.open(path).size, pre.img_size, pre.crop_pct)
    return all(round((n - pre.img_size) / 2) == (n - pre.img_size) // 2 for n in (w, h))


# ---------------------------------------------------------------------------- preprocessor_config.json
@pytest.mark.parametrize(
    "pre",
    [
        EvalPreprocess(),  # the 224 checkpoints: short side 256, crop 224
        EvalPreprocess(img_size=384, crop_pct=1.0),  # the 384 checkpoints: squash
        SQUASH64,  # a squash below 384: ViT's processor
        EvalPreprocess(img_size=160, crop_pct=0.9, interpolation="bilinear"),
        EvalPreprocess(interpolation="nearest"),
        EvalPreprocess(img_size=448, crop_pct=1.0, interpolation="lanczos"),
        EvalPreprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)),
        EvalPreprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    ],
    ids=lambda p: f"{p.img_size}-{p.crop_pct}-{p.interpolation}-{p.mean[0]}",
)
def test_processor_round_trips(pre):
    d = pre.to_hf_processor()
    assert EvalPreprocess.from_hf_processor(json.loads(json.dumps(d))) == pre
    assert d["do_resize"] and d["do_rescale"] and d["do_normalize"] and d["rescale_factor"] == 1 / 255
    kind = "ViTImageProcessor" if pre.img_size < 384 and pre.crop_pct == 1.0 else "ConvNextImageProcessor"
    assert d["image_processor_type"] == kind


def test_processor_refuses_what_transformers_cannot_spell(tmp_path):
    pre = EvalPreprocess(img_size=384, crop_pct=0.875)  # ConvNext never crops at 384, ViT never crops
    with pytest.raises(cvt.ConfigError, match=r"^crop_pct: 0.875 at img_size 384 .*only below 384"):
        pre.to_hf_processor()
    with pytest.raises(ConversionError, match=f"^{tmp_path / 'hf'}: cannot write an HF directory: crop_pct"):
        cvt.save_pretrained(tiny(pre), tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parity
@pytest.mark.parametrize("pre", [CROP64, SQUASH64, EvalPreprocess(img_size=96, crop_pct=0.9, interpolation="bilinear"),
                                 EvalPreprocess(img_size=384, crop_pct=1.0, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))],
                         ids=["crop64", "squash64", "bilinear96", "squash384-custom-norm"])  # fmt: skip
def test_transformers_processor_equals_our_transform(tmp_path, pre):
    transformers = pytest.importorskip("transformers")
    cvt.save_pretrained(tiny(pre), tmp_path / "hf")
    proc = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    ours = build_eval_transform(pre)
    compared = 0
    for name in PHOTOS:
        path = photo_paths()[name]
        if not same_crop_as_transformers(path, pre):
            continue
        img = Image.open(path).convert("RGB")
        theirs = proc(images=img, return_tensors="pt").pixel_values[0]
        torch.testing.assert_close(theirs, ours(img), rtol=0, atol=1e-5, msg=name)
        compared += 1
    assert compared >= 3


# ---------------------------------------------------------------------------- the pipeline, end to end
@pytest.mark.parity
@pytest.mark.parametrize("pre", [CROP64, SQUASH64], ids=["crop", "squash"])
def test_pipeline_equals_cvt_predict_on_photos(tmp_path, pre):
    """transformers' pipeline on the directory ``cvt convert --to hf`` wrote: the same top-5 names and
    probabilities (1e-4) as ``cvt predict --format json`` on that directory (both exact GELU)."""
    transformers = pytest.importorskip("transformers")
    model = tiny(pre)
    save_native(model.state_dict(), model.config, tmp_path / "tiny.safetensors", model.pretrained_cfg)
    done = cli("convert", tmp_path / "tiny.safetensors", tmp_path / "hf", "--to", "hf")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    paths = [photo_paths()[n] for n in PHOTOS if same_crop_as_transformers(photo_paths()[n], pre)]
    assert len(paths) >= 3
    done = cli("predict", *paths, "--weights", tmp_path / "hf", "--format", "json", "--topk", 5, "--no-progress")
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    classify = transformers.pipeline("image-classification", model=str(tmp_path / "hf"), device="cpu")
    for path, rec in zip(paths, records):
        theirs = classify(str(path), top_k=5)
        assert [r["label"] for r in theirs] == rec["labels"], path.name
        assert set(rec["labels"]) <= set(NAMES)
        np.testing.assert_allclose([r["score"] for r in theirs], rec["probs"], rtol=0, atol=1e-4, err_msg=path.name)
        assert min(np.diff(rec["probs"][:3]) * -1) > 1e-3  # a clear top-3 order, so equal order is a real check


# ---------------------------------------------------------------------------- class names and the model card
def test_imagenet_named_model_converts_to_real_names(tmp_path, capsys):
    """A model labelled "imagenet-1k" (by name, as the released checkpoints are) keeps real names through
    ``cvt convert``; the card is valid YAML front matter with the hub's keys."""
    model = cvt.create_model(cvt.get_config("cvt-13").replace(name="my-cvt13"))  # random weights, cvt-13 shape
    spec = model.pretrained_cfg.replace(labels="imagenet-1k", license="Apache-2.0", source="my training run")
    save_native(model.state_dict(), model.config, tmp_path / "in1k.safetensors", spec)
    rc = main(["convert", str(tmp_path / "in1k.safetensors"), str(tmp_path / "hf"), "--to", "hf"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"wrote {tmp_path / 'hf'}") and "quick_gelu" in err  # the activation note stays
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    names = imagenet_labels()
    assert hf["id2label"]["0"] == "tench, Tinca tinca" == names[0]
    assert [hf["id2label"][str(i)] for i in range(1000)] == names
    assert hf["label2id"]["tabby, tabby cat"] == 281
    card = (tmp_path / "hf" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta == {"library_name": "transformers", "pipeline_tag": "image-classification", "license": "apache-2.0",
                    "tags": ["cvt", "image-classification", "vision"], "datasets": ["imagenet-1k"]}  # fmt: skip
    assert body.startswith(MARK) and "# my-cvt13" in body and "my training run" in body
    assert "| 2 | 384 | 10 | 6 | 16 | yes |" in body and "20.00 M parameters" in body
    assert "quick_gelu" in body and 'activation="quick_gelu"' in body
    assert "Resize the short side to 256 (bicubic" in body
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert EvalPreprocess.from_hf_processor(pre) == EvalPreprocess()
    back = cvt.create_model(weights=tmp_path / "hf", activation="quick_gelu")
    assert list(back.pretrained_cfg.labels) == names and back.pretrained_cfg.preprocess == EvalPreprocess()


def test_released_checkpoint_card_and_names_without_names(tmp_path):
    """A released checkpoint's spec: licence mit (Microsoft's MIT release), its paper result; a model without
    names gets transformers' LABEL_<i> and no datasets."""
    cvt.save_pretrained(cvt.create_model("cvt-tiny"), tmp_path / "plain", activation="quick_gelu")
    hf = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert hf["id2label"] == {str(i): f"LABEL_{i}" for i in range(10)}
    meta = yaml.safe_load((tmp_path / "plain" / "README.md").read_text().split("---\n")[1])
    assert "datasets" not in meta and "license" not in meta  # nothing recorded: nothing claimed
    assert "quick_gelu" in (tmp_path / "plain" / "README.md").read_text()
    from cvt.core.modelcard import hub_license, model_card
    from cvt.core.presets import CHECKPOINTS, LICENSE

    assert hub_license(LICENSE) == ("mit", None)
    assert hub_license("CC BY-NC 4.0 research only")[0] == "other"
    card = model_card(cvt.get_config("cvt-21-384-22k"), CHECKPOINTS["cvt-21-384-22k"].spec)
    assert "84.9% ImageNet-1k top-1" in card and "ImageNet-22k, fine-tuned" in card and "Resize to 384x384" in card


def test_own_readme_is_kept_ours_replaced(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "README.md").write_text("# my own card\n")
    cvt.save_pretrained(tiny(), d)
    assert (d / "README.md").read_text() == "# my own card\n"
    assert sorted(p.name for p in d.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]  # fmt: skip
    (d / "README.md").unlink()
    cvt.save_pretrained(tiny(), d)
    first = (d / "README.md").read_text()
    assert MARK in first and "tabby cat" in first
    cvt.save_pretrained(tiny(labels=[n.upper() for n in NAMES]), d)  # ours: replaced
    assert "TABBY CAT" in (d / "README.md").read_text()
    edited = (d / "README.md").read_text().replace(MARK + "\n", "") + "my notes\n"  # the mark removed: kept
    (d / "README.md").write_text(edited)
    cvt.save_pretrained(tiny(), d)
    assert (d / "README.md").read_text() == edited


def test_cli_force_keeps_labels_given_by_name(tmp_path):
    model = tiny()
    save_native(model.state_dict(), model.config, tmp_path / "t.safetensors", model.pretrained_cfg)
    (tmp_path / "hf").mkdir()
    assert main(["convert", str(tmp_path / "t.safetensors"), str(tmp_path / "hf"), "--to", "hf"]) == 2  # exists
    assert main(["convert", str(tmp_path / "t.safetensors"), str(tmp_path / "hf"), "--to", "hf", "--force"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"]["3"] == "space shuttle"


# ---------------------------------------------------------------------------- file modes
def _write_private(tmp: Path) -> None:
    """A writer that ignores the umask, as safetensors does (0600), with a subdirectory (a SavedModel's)."""
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp / "model.safetensors"))
    (tmp / "variables").mkdir(mode=0o700)
    (tmp / "variables" / "data").write_bytes(b"1")
    os.chmod(tmp / "variables" / "data", 0o600)
    (tmp / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp / "run.sh", 0o700)


@pytest.mark.parametrize("mask, file_mode, dir_mode, exec_mode", [(0o022, 0o644, 0o755, 0o755),
                                                                  (0o077, 0o600, 0o700, 0o700),
                                                                  (0o002, 0o664, 0o775, 0o775)])  # fmt: skip
def test_directory_outputs_follow_the_umask(tmp_path, mask, file_mode, dir_mode, exec_mode):
    with umask(mask):
        atomic_write_dir(tmp_path / "out", _write_private)
        cvt.save_pretrained(tiny(), tmp_path / "hf")
    assert mode(tmp_path / "out") == dir_mode and mode(tmp_path / "out" / "variables") == dir_mode
    assert mode(tmp_path / "out" / "model.safetensors") == file_mode
    assert mode(tmp_path / "out" / "variables" / "data") == file_mode
    assert mode(tmp_path / "out" / "run.sh") == exec_mode
    assert mode(tmp_path / "hf") == dir_mode
    assert {p.name: mode(p) for p in (tmp_path / "hf").iterdir()} == {
        n: file_mode for n in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json")
    }


def test_replaced_files_keep_their_mode(tmp_path):
    with umask(0o022):
        cvt.save_pretrained(tiny(), tmp_path / "hf")
        os.chmod(tmp_path / "hf" / "model.safetensors", 0o640)
        cvt.save_pretrained(tiny(), tmp_path / "hf")
    assert mode(tmp_path / "hf" / "model.safetensors") == 0o640
    assert mode(tmp_path / "hf" / "config.json") == 0o644
