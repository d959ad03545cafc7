"""``cvt predict`` and ``cvt.Predictor``: parity with transformers on real photos, bad inputs, labels,
formats, explain maps. Random tiny models only (nothing downloads)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cvt
from conftest import TINY_HF, hf_model
from cvt.cli import main
from cvt.core.labels import LabelError, imagenet_labels, imagenet_wnids, load_label_file, resolve_labels
from cvt.core.spec import EvalPreprocess
from cvt.explain import cls_attention, kv_grid
from cvt.torch.factory import resolve
from test_transforms import PHOTOS, hf_processor, official, photo_paths

transformers = pytest.importorskip("transformers")

NAMES = [f"thing {i}" for i in range(10)]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """The same random tiny HF CvT (named labels) saved twice: with a 224 and with a 384 processor."""
    torch.manual_seed(3)
    model = hf_model(**TINY_HF, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    dirs = {224: tmp_path_factory.mktemp("hf224")}
    model.save_pretrained(dirs[224])
    dirs[384] = tmp_path_factory.mktemp("hf384")
    for f in dirs[224].iterdir():
        shutil.copy(f, dirs[384] / f.name)
    for size, d in dirs.items():
        hf_processor(size).save_pretrained(d)
    return dirs, model


def _hf_reference(model, proc, img: Image.Image, size: int, k: int = 5):
    """transformers' own processor + model; the official crop where HF's is one pixel off (see README)."""
    x = proc(images=img, return_tensors="pt").pixel_values
    short = int(size / 0.875)
    long_side = int(short * max(img.size) / min(img.size))
    if size < 384 and round((long_side - size) / 2) != (long_side - size) // 2:
        x = official(img, size)[None]
    with torch.no_grad():
        probs = model(pixel_values=x).logits.softmax(-1)[0]
    v, i = probs.topk(k)
    return i.tolist(), v.tolist()


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("size", [224, 384])
def test_cli_matches_transformers_on_photos(hf_dirs, capsys, size):
    dirs, hf = hf_dirs
    paths = [photo_paths()[n] for n in PHOTOS]
    rc, out, err = _run(capsys, *paths, "--weights", dirs[size], "--format", "json", "--no-progress")
    assert rc == 0 and err == ""
    records = json.loads(out)
    assert [r["path"] for r in records] == [str(p) for p in paths]
    proc = hf_processor(size)
    for rec, path in zip(records, paths):
        idx, probs = _hf_reference(hf, proc, Image.open(path).convert("RGB"), size)
        assert rec["indices"] == idx, path.name
        assert rec["labels"] == [NAMES[i] for i in idx]  # HF id2label
        np.testing.assert_allclose(rec["probs"], probs, rtol=0, atol=1e-4, err_msg=path.name)


def test_predictor_inputs_and_activation(hf_dirs):
    dirs, _ = hf_dirs
    p = cvt.Predictor(weights=dirs[224], device="cpu")
    assert p.model.config.activation == "gelu" and p.preprocess.img_size == 224 and p.labels == NAMES
    path = photo_paths()["chelsea.png"]
    img = Image.open(path)
    single = p(path)
    assert isinstance(single, cvt.Prediction) and single.path == str(path) and len(single.indices) == 5
    arr = np.array(img.convert("RGB"))
    variants = p([img, arr, torch.from_numpy(arr).permute(2, 0, 1), p.prepare(img)], topk=3)
    assert [v.path for v in variants] == [None] * 4
    for v in variants:
        assert v.indices == single.indices[:3]
        np.testing.assert_allclose(v.probs, single.probs[:3], rtol=0, atol=1e-6)
    batch = p(torch.stack([p.prepare(img)] * 2))  # (B, 3, H, W) float: model input as is
    assert isinstance(batch, list) and len(batch) == 2
    expected = {"path": str(path), "labels": single.labels, "indices": single.indices, "probs": single.probs}
    assert single.to_dict() == expected
    # an architecture name with the same weights: the file decides (a released checkpoint's name would not)
    q = cvt.Predictor("cvt-tiny", weights=dirs[224], device="cpu")
    assert q.model.config.activation == "gelu"
    with pytest.raises(cvt.predict.PredictorError, match="no released weights"):
        cvt.Predictor("cvt-tiny")
    r = cvt.Predictor(cvt.create_model("cvt-tiny").eval(), labels=[str(i) for i in range(10)], topk=20)
    assert r.preprocess.img_size == 64 and len(r(arr).indices) == 10  # topk capped at num_classes


def _bad_inputs(root: Path) -> dict[str, str]:
    """Each kind of bad input, with the reason cvt predict must give for it."""
    good = photo_paths()["rocket.jpg"].read_bytes()
    (root / "zero.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image at all\n")
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    from test_transforms import _png_header_only

    (root / "huge.png").write_bytes(_png_header_only(60_000, 60_000))
    (root / "gone.jpg").symlink_to(root / "does-not-exist.jpg")
    os.mkfifo(root / "pipe.png")
    bad = {
        "zero.jpg": "empty file",
        "notes.jpg": "not an image",
        "truncated.jpg": "truncated",
        "corrupt.png": "",
        "huge.png": "too large",
        "gone.jpg": "no such file",
        "pipe.png": "not a regular file",
    }
    if os.geteuid() != 0:  # root reads anything
        shutil.copy(photo_paths()["coffee.png"], root / "locked.png")
        os.chmod(root / "locked.png", 0)
        bad["locked.png"] = "permission denied"
    return bad


def test_directory_with_bad_inputs(hf_dirs, tmp_path, capsys):
    dirs, _ = hf_dirs
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    shutil.copy(photo_paths()["chelsea.png"], root / "chelsea.png")
    shutil.copy(photo_paths()["china.jpg"], root / "sub" / "china.jpg")
    (root / "README.txt").write_text("skipped: not an image extension")
    bad = _bad_inputs(root)
    options = ["--weights", dirs[224], "--format", "csv", "--batch-size", "2", "--workers", "1"]
    rc, out, err = _run(capsys, root, tmp_path / "missing.png", *options)
    assert rc == 1 and "Traceback" not in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["path"]).name for r in rows] == ["chelsea.png", "china.jpg"]
    assert rows[0]["label_1"] in NAMES and 0 < float(rows[0]["prob_1"]) <= 1
    lines = err.strip().splitlines()
    for name, reason in bad.items():
        hit = [ln for ln in lines if f"{root / name}: " in ln]
        assert len(hit) == 1 and reason in hit[0], (name, hit)
    assert any(f"{tmp_path / 'missing.png'}: no such file" in ln for ln in lines)
    assert lines[-1] == f"cvt predict: {len(bad) + 1} input(s) failed, 2 classified"
    assert len(lines) == len(bad) + 2


def test_labels_formats_output_and_globs(hf_dirs, tmp_path, capsys):
    dirs, _ = hf_dirs
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in ("chelsea.png", "coffee.png"):
        shutil.copy(photo_paths()[n], photos / n)
    (tmp_path / "names.txt").write_text("\n".join(f"n{i}\tmine {i}" for i in range(10)) + "\n")
    options = ["--labels", tmp_path / "names.txt", "--topk", "2", "--output", tmp_path / "out.json", "--format", "json"]
    rc, out, _ = _run(capsys, photos / "*.png", "--weights", dirs[224], *options)
    assert rc == 0 and out == ""
    records = json.loads((tmp_path / "out.json").read_text())
    assert len(records) == 2 and all(len(r["labels"]) == 2 and r["labels"][0].startswith("mine ") for r in records)
    rc, out, _ = _run(capsys, photos / "chelsea.png", "--weights", dirs[224])
    assert rc == 0 and out.splitlines()[0].endswith("chelsea.png") and "%" in out.splitlines()[1]
    (tmp_path / "three.json").write_text('["a", "b", "c"]')
    rc, _, err = _run(capsys, photos, "--weights", dirs[224], "--labels", tmp_path / "three.json")
    assert rc == 1 and "has 3 labels but the model has 10 classes" in err and err.count("\n") == 1
    rc, _, err = _run(capsys, tmp_path / "nothing-*.png", "--weights", dirs[224])
    assert rc == 1 and "no file matches this pattern" in err


def test_usage_errors_and_offline(capsys, tmp_path, monkeypatch):
    photo = photo_paths()["chelsea.png"]
    assert _run(capsys, photo, "--topk", "0")[0] == 2
    rc, _, err = _run(capsys, photo, "--model", "cvt-99")
    assert rc == 2 and "unknown model 'cvt-99'" in err
    rc, _, err = _run(capsys, photo, "--model", "cvt-tiny")
    assert rc == 2 and "no released weights" in err
    assert main(["predict", str(photo), "--format", "xml"]) == 2
    capsys.readouterr()
    # no --weights, no network (HF_HUB_OFFLINE=1 from conftest), empty cache: the clear message, exit 1
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    rc, out, err = _run(capsys, photo, "--model", "cvt-13")
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert "cvt-13" in err and "--weights" in err and "CvT-13-224x224-IN-1k.pth" in err


def test_pretrained_from_cache_gives_imagenet_names(tmp_path, monkeypatch, capsys):
    """A real-size cvt-13 placed in the hub cache layout: --model cvt-13 alone works offline."""
    from cvt.torch.weights import save_native

    model = cvt.create_model("cvt-13")
    commit = "f" * 40
    repo = tmp_path / "models--microsoft--cvt-13"
    save_native(model.state_dict(), model.config, repo / "snapshots" / commit / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    rc, out, err = _run(capsys, photo_paths()["astronaut.png"], "--format", "json", "--topk", "3")
    assert rc == 0 and err == ""
    (rec,) = json.loads(out)
    assert rec["labels"] == [imagenet_labels()[i] for i in rec["indices"]]


def test_preprocess_follows_the_checkpoint(hf_tiny_dir, tmp_path):
    def pre(name=None, weights=None):  # strict=False: the spec alone, whether or not the weights fit the name
        return resolve(name, weights=weights, strict=False)[1].preprocess

    assert pre("cvt-13") == EvalPreprocess(224, 0.875)
    assert pre("cvt-21-384-22k") == EvalPreprocess(384, 1.0)
    assert pre("cvt-tiny") == EvalPreprocess(64, 0.875)
    hf_dir = tmp_path / "hf"
    shutil.copytree(hf_tiny_dir[0], hf_dir)
    (hf_dir / "preprocessor_config.json").write_text('{"size": {"shortest_edge": 384}, "crop_pct": 0.875}')
    assert pre(weights=hf_dir / "model.safetensors") == EvalPreprocess(384, 1.0)
    assert pre("cvt-13", hf_dir) == EvalPreprocess(224, 0.875)  # a released checkpoint's name wins


def test_explain_writes_pngs(hf_dirs, tmp_path, capsys):
    dirs, _ = hf_dirs
    paths = [photo_paths()[n] for n in ("chelsea.png", "rocket.jpg")]
    rc, out, _ = _run(capsys, *paths, "--weights", dirs[224], "--explain", tmp_path / "ex", "--format", "json")
    assert rc == 0
    for rec in json.loads(out):
        png = Image.open(rec["explain"])
        assert png.format == "PNG" and png.size[0] == 2 * 224 + 24 and png.size[1] > 224
    # a user's own file of the same name in the folder is never replaced: the overlay is written beside it;
    # our own overlay from the run above is replaced in place
    mine = tmp_path / "ex" / "rocket.png"
    Image.new("RGB", (5, 5)).save(mine)
    rc, out, _ = _run(capsys, *paths, "--weights", dirs[224], "--explain", tmp_path / "ex", "--format", "json")
    assert rc == 0 and Image.open(mine).size == (5, 5)
    written = sorted(Path(r["explain"]).name for r in json.loads(out))
    assert written == ["chelsea.png", "rocket-1.png"]
    p = cvt.Predictor(weights=dirs[384], device="cpu", explain=True)
    x = torch.stack([p.prepare(Image.open(q)) for q in paths])  # (2, 3, 384, 384)
    heat = cls_attention(p.model, x)
    assert heat.shape == (2, 12, 12) and kv_grid(p.model, 224, 224) == (7, 7)
    torch.testing.assert_close(heat.sum(dim=(1, 2)), torch.ones(2))


def test_labels_module(tmp_path):
    names = imagenet_labels()
    assert len(names) == 1000 and names[281] == "tabby, tabby cat" and names[0] == "tench, Tinca tinca"
    assert imagenet_wnids()[0] == "n01440764" and len(set(imagenet_wnids())) == 1000
    (tmp_path / "a.json").write_text(json.dumps({"id2label": {"1": "b", "0": "a"}}))
    assert load_label_file(tmp_path / "a.json") == ["a", "b"]
    (tmp_path / "b.txt").write_text("x\ny\n\n")
    assert load_label_file(tmp_path / "b.txt") == ["x", "y"]
    (tmp_path / "c.json").write_text('{"0": "a", "2": "c"}')
    with pytest.raises(LabelError, match="without gaps"):
        load_label_file(tmp_path / "c.json")
    assert resolve_labels(1000, [f"LABEL_{i}" for i in range(1000)]) == names  # HF placeholders ignored
    assert resolve_labels(2, ["p", "q"]) == ["p", "q"] and resolve_labels(2) == ["class_0", "class_1"]
    assert resolve_labels(2, ["p", "q"], tmp_path / "b.txt") == ["x", "y"]


def test_cli_subprocess_one_line_no_traceback(tmp_path):
    from cvt.torch.weights import save_native

    model = cvt.create_model("cvt-tiny")
    save_native(model.state_dict(), model.config, tmp_path / "tiny.safetensors")
    (tmp_path / "bad.jpg").write_bytes(b"")
    inputs = [str(tmp_path / "bad.jpg"), str(photo_paths()["coffee.png"])]
    options = ["--weights", str(tmp_path / "tiny.safetensors"), "--topk", "1"]
    command = [sys.executable, "-m", "cvt", "predict", *inputs, *options]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"cvt predict: error: {tmp_path / 'bad.jpg'}: empty file (0 bytes)",
        "cvt predict: 1 input(s) failed, 1 classified",
    ]
    assert proc.stdout.splitlines()[0] == str(photo_paths()["coffee.png"]) and "class_" in proc.stdout


def test_iter_files_keeps_order_failures_and_the_pixel_limit(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(small)
    Image.new("RGB", (100, 100), (10, 200, 10)).save(big)
    tiny = cvt.create_model("cvt-tiny").eval()
    p = cvt.Predictor(tiny, batch_size=2, max_pixels=1000, device="cpu")
    assert p.model.fused and not tiny.fused  # fused once for inference, on a copy of a model passed in
    paths = [str(big), str(small), str(tmp_path / "gone.png"), str(big), str(small)]
    batches = list(p.iter_files(paths))
    assert [len(b.predictions) + len(b.failures) for b in batches] == [2, 2, 1]
    assert [f for b in batches for f, _ in b.failures] == [str(big), paths[2], str(big)]
    assert [r.path for b in batches for r in b.predictions] == [str(small), str(small)]
    assert all("too large" in msg for b in batches for f, msg in b.failures if f == str(big))
    with pytest.raises(cvt.predict.PredictorError, match="explain=True"):
        next(p.iter_files(paths, explain=True))  # the cls-only fused model computes no attention maps
    for name, value in (("topk", 0), ("batch_size", 0), ("num_workers", -1), ("max_pixels", 0)):
        with pytest.raises(cvt.predict.PredictorError, match=f"{name} must be >= "):
            cvt.Predictor(cvt.create_model("cvt-tiny"), **{name: value})
