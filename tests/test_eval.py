"""``evaluate`` and ``cvt eval``: metrics, class-folder mapping (ImageNet / ImageNet-V2 layouts), reports."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

import cvt
import cvt.commands.eval as eval_command
import cvt.train.plots
from conftest import path_state, read_only_dir
from cvt.cli import main
from cvt.core.classes import map_eval_classes
from cvt.core.errors import DataError
from cvt.core.labels import imagenet_wnids
from cvt.data.sources import EvalFiles, eval_source
from cvt.eval import evaluate
from cvt.torch.factory import resolve
from cvt.torch.weights import save_native


class _Fixed(torch.nn.Module):
    """Returns preset logits for inputs whose first pixel holds the row index."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


def test_evaluate_metrics():
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5, 1, 0, 0, 0], [0, 1, 5, 0, 0, 0], [0, 0, 0, 1, 2, 3]])
    labels = torch.tensor([0, 2, 2, 3])  # right, wrong (top-2), right, wrong (rank 3 of 6)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    loader = [(x[:3], labels[:3], []), (x[3:], labels[3:], ["bad.jpg: corrupt"])]
    res = evaluate(_Fixed(logits), loader, 6)
    assert res.n == 4 and res.top1 == 0.5 and res.top5 == 1.0 and res.skipped == 1
    assert res.skipped_files == ["bad.jpg: corrupt"]
    assert res.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert res.per_class[:4] == [1.0, None, 0.5, 0.0] and res.confusion[2] == [0, 1, 1, 0, 0, 0]
    assert res.images_per_s > 0
    # under torchrun every process sums its shard's numbers with the others' (here: two identical shards)
    twice = evaluate(_Fixed(logits), loader, 6, all_reduce=lambda t: t.mul_(2))
    assert twice.n == 8 and twice.top1 == 0.5 and twice.loss == pytest.approx(res.loss)
    assert twice.confusion[2] == [0, 2, 2, 0, 0, 0]


LABELS = ("cat", "dog", "fox")


def test_class_folders_map_to_the_model_classes():
    wnids = imagenet_wnids()
    # ImageNet val by synset id: the standard order, even for a subset of the classes
    assert map_eval_classes([wnids[281], wnids[0]], 1000) == {wnids[281]: 281, wnids[0]: 0}
    assert map_eval_classes([wnids[281]], 1000, "imagenet-1k").rule == "synset"  # a released checkpoint's labels
    # ImageNet-V2: folders named 0..999
    assert map_eval_classes(["0", "10", "999"], 1000) == {"0": 0, "10": 10, "999": 999}
    # a model trained here: its own labels, whatever the order of the folders, any subset of them
    assert map_eval_classes(["dog", "cat"], 2, ["cat", "dog"]) == {"cat": 0, "dog": 1}
    by_name = map_eval_classes(["fox", "dog"], 3, LABELS)
    assert by_name == {"fox": 2, "dog": 1} and by_name.rule == "labels" and by_name.note is None
    assert map_eval_classes(["2", "0"], 3, LABELS) == {"2": 2, "0": 0}  # integer folders: indices
    # the digits model's labels are its indices: integer folders still work, by name or by index alike
    assert map_eval_classes(["3", "7"], 10, [str(i) for i in range(10)]) == {"3": 3, "7": 7}
    # real labels that are integers are names, not indices
    assert map_eval_classes(["20"], 2, ["10", "20"]) == {"20": 1}
    with pytest.raises(DataError, match="match none of the model's labels: 5 "):
        map_eval_classes(["5"], 2, ["10", "20"])
    with pytest.raises(DataError, match="not a class index"):
        map_eval_classes(["0", "12"], 10)
    with pytest.raises(DataError, match="not ImageNet-1k synsets: n00000001"):
        map_eval_classes(["n00000001"], 1000)
    with pytest.raises(DataError, match="'crane' names more than one"):  # two ImageNet classes share the name
        map_eval_classes(["crane"], 1000, "imagenet-1k")


def test_a_model_with_names_never_falls_back_to_sorted_order():
    """The issue: a cat/dog/fox model on folders dog/fox/wolf mapped them by position (dog->0 ...) and scored 0%."""
    with pytest.raises(DataError, match=r"1 of 3 match none of the model's labels: wolf \(the model's 3 labels: cat"):
        map_eval_classes(["dog", "fox", "wolf"], 3, LABELS)
    with pytest.raises(DataError, match="match none"):  # a mix of names and indices is refused too
        map_eval_classes(["dog", "0"], 3, LABELS)
    with pytest.raises(DataError, match="match none"):  # ImageNet names: synsets or indices, not 1000 other names
        map_eval_classes([f"c{i:04d}" for i in range(1000)], 1000, "imagenet-1k")
    with pytest.raises(
        DataError, match=r"match none of the model's labels: a, b, c, d, e, f, g, h, i, j \.\.\. \(12 in all\)"
    ):
        map_eval_classes(list("abcdefghijkl"), 12, [f"name{i}" for i in range(12)])


@pytest.mark.parametrize(
    "labels, why",
    [
        (None, "the model has no class names"),
        (("LABEL_0", "LABEL_1", "LABEL_2"), "named by index only"),  # HF's placeholders
        (("0", "1", "2"), "named by index only"),
        (("x", "y"), "the model has no class names"),  # names for another head size describe nothing here
    ],
)
def test_only_a_model_without_names_maps_by_sorted_position_and_says_so(labels, why):
    mapping = map_eval_classes(["c", "a", "b"], 3, labels)
    assert mapping == {"a": 0, "b": 1, "c": 2} and mapping.rule == "sorted"
    assert why in mapping.note and mapping.note.endswith("sorted order: a->0, b->1, c->2")
    with pytest.raises(DataError, match="cannot map 2 class folders"):  # not one per class: no guess at all
        map_eval_classes(["a", "b"], 3, labels)


def test_preprocessing_comes_from_the_checkpoint(tmp_path):
    tiny = cvt.create_model("cvt-tiny")
    spec = cvt.PretrainedSpec(cvt.EvalPreprocess(img_size=32, crop_pct=1.0), labels=tuple("abcdefghij"))
    save_native(tiny.state_dict(), tiny.config, tmp_path / "t.safetensors", spec)
    assert resolve(weights=tmp_path / "t.safetensors")[1] == spec  # the file's own spec
    assert resolve("cvt-13-384")[1].preprocess.crop_pct == 1.0
    pre = resolve("cvt-13")[1].preprocess
    assert (pre.img_size, pre.crop_pct) == (224, 0.875)


def _imagenet_v2_layout(root: Path) -> None:
    for c in ("0", "1", "999"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40 + 7 * i, 36), (30 * i, 90, 200)).save(root / c / f"{i}.jpeg")


def test_cvt_eval_on_an_imagenet_v2_layout(tmp_path, capsys):
    model = cvt.create_model("cvt-tiny", num_classes=1000).eval()
    save_native(model.state_dict(), model.config, tmp_path / "m.safetensors")
    _imagenet_v2_layout(tmp_path / "v2")
    (tmp_path / "v2" / "999" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    report = tmp_path / "out" / "report.json"
    code = main(
        [
            "eval",
            str(tmp_path / "v2"),
            "--weights",
            str(tmp_path / "m.safetensors"),
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--output",
            str(report),
            "--confusion",
            str(tmp_path / "cm.png"),
        ]
    )
    assert code == 1  # one input failed: the corrupt file is reported, the others are evaluated
    r = json.loads(report.read_text())
    assert r["n"] == 6 and r["skipped"] == 1 and set(r["per_class"]) == {"0", "1", "999"}
    assert r["preprocess"]["img_size"] == 64 and r["confusion"] is None  # 1000 classes: not stored
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr()
    assert "top-1" in out.out and "corrupt.jpg" in out.err


def test_cvt_eval_errors(tmp_path, capsys):
    assert main(["eval", "digits"]) == 2
    assert "give --weights" in capsys.readouterr().err
    model = cvt.create_model("cvt-tiny").eval()
    save_native(model.state_dict(), model.config, tmp_path / "m.safetensors")
    assert main(["eval", str(tmp_path / "nowhere"), "--weights", str(tmp_path / "m.safetensors")]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "d" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "a" / "x.png")
    (tmp_path / "d" / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "b" / "x.png")
    assert main(["eval", str(tmp_path / "d"), "--weights", str(tmp_path / "m.safetensors")]) == 1
    assert "cannot map 2 class folders" in capsys.readouterr().err


# ---------------------------------------------------------------------------- by name, through the command
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """``fox.safetensors``: a cat/dog/fox model that always answers fox; ``nameless.safetensors``: the same
    without class names; image folders ``fox_dog/{fox,dog}``, ``wolf/{dog,fox,wolf}``, ``abc/{a,b,c}``; a file
    ``afile``, a directory ``adir`` and an empty folder ``empty`` as odd destinations and data."""
    w = tmp_path_factory.mktemp("eval")
    model = cvt.create_model("cvt-tiny", num_classes=3).eval()
    with torch.no_grad():  # whatever the image: logits (0, 0, 10), i.e. "fox"
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    pre = cvt.EvalPreprocess(img_size=32, crop_pct=1.0)
    save_native(model.state_dict(), model.config, w / "fox.safetensors", cvt.PretrainedSpec(pre, labels=LABELS))
    save_native(model.state_dict(), model.config, w / "nameless.safetensors", cvt.PretrainedSpec(pre))
    for folder, classes in (("fox_dog", ("fox", "dog")), ("wolf", ("dog", "fox", "wolf")), ("abc", "abc")):
        for c in classes:
            (w / folder / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 36), (60 * i, 90, 200)).save(w / folder / c / f"{i}.png")
    (w / "afile").write_text("a file, not a directory\n")
    (w / "adir").mkdir()
    (w / "empty").mkdir()
    (w / "corrupt" / "fox").mkdir(parents=True)
    (w / "corrupt" / "fox" / "bad.png").write_bytes(b"\x89PNG not really")
    return w


def _eval(w: Path, data: str, weights: str, *extra: str) -> list[str]:
    return ["eval", str(w / data), "--weights", str(w / weights), "--workers", "0", *extra]


def test_cvt_eval_maps_folders_by_the_model_names(world, capsys):
    report = world / "out" / "fox_dog.json"
    assert main([*_eval(world, "fox_dog", "fox.safetensors"), "--output", str(report)]) == 0
    r = json.loads(report.read_text())
    # by name: the fox folder is class 2 (all right), dog is class 1 (all wrong); by sorted position fox would be 1
    assert r["top1"] == 0.5 and r["per_class"] == {"dog": 0.0, "fox": 1.0} and r["class_mapping"] == "labels"
    assert "note" not in capsys.readouterr().err
    assert list(r) == [  # the report's keys and their order: what scripts reading --output rely on
        "data", "model", "weights", "class_mapping", "preprocess", "n", "top1", "top5", "loss", "images_per_s",
        "per_class", "skipped", "skipped_files", "confusion",
    ]  # fmt: skip


def test_cvt_eval_refuses_folders_that_are_not_the_model_classes(world, capsys):
    report = world / "out" / "wolf.json"
    assert main([*_eval(world, "wolf", "fox.safetensors"), "--output", str(report)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cvt eval: error: {world / 'wolf'}: class folders: 1 of 3 match")
    assert "wolf (the model's 3 labels: cat, dog, fox)" in err[0]
    assert not report.exists()


def test_cvt_eval_without_names_maps_sorted_and_says_so(world, capsys):
    report = world / "out" / "abc.json"
    assert main([*_eval(world, "abc", "nameless.safetensors"), "--output", str(report), "--json"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cvt eval: note: the model has no class names; class folders mapped in sorted order: a->0, b->1, c->2"
    ]
    r = json.loads(report.read_text())
    assert r["class_mapping"] == "sorted" and r["per_class"] == {"a": 0.0, "b": 0.0, "c": 1.0}


def test_a_confusion_picture_that_fails_keeps_the_report(world, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no usable font\nsecond line")

    monkeypatch.setattr(cvt.train.plots, "confusion_matrix", broken)
    report, png = world / "out" / "kept.json", world / "out" / "cm.png"
    assert main([*_eval(world, "fox_dog", "fox.safetensors"), "--output", str(report), "--confusion", str(png)]) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"cvt eval: error: {png}: cannot draw the confusion matrix (RuntimeError: no usable font)"
    ]
    assert json.loads(report.read_text())["top1"] == 0.5 and "top-1 50.00%" in out and not png.exists()


# ---------------------------------------------------------------------------- hostile arguments
@dataclass(frozen=True)
class Row:
    id: str
    argv: Callable[[Path], list[str]]
    code: int
    says: str  # in the one stderr line
    dest: str | None = None  # must stay as it was (absent, or the same listing)
    before_load: bool = True  # refused before the model is loaded (the check must not wait for it)


ROWS = [
    Row("cuda", lambda w: _eval(w, "fox_dog", "fox.safetensors", "--device", "cuda"), 2, "CUDA"),
    Row("batch-size-0", lambda w: _eval(w, "fox_dog", "fox.safetensors", "--batch-size", "0"), 2, "--batch-size"),
    Row("missing-data", lambda w: _eval(w, "nowhere", "fox.safetensors"), 1, "nowhere: no such file"),
    Row("empty-folder", lambda w: _eval(w, "empty", "fox.safetensors"), 1, "no class folders with images"),
    Row("data-is-an-image", lambda w: _eval(w, "fox_dog/fox/0.png", "fox.safetensors"), 1, "0.png: an image"),
    Row("unknown-model", lambda w: [*_eval(w, "fox_dog", "fox.safetensors"), "--model", "nope"], 2, "'nope'"),
    Row(
        "architecture-without-weights",
        lambda w: ["eval", str(w / "fox_dog"), "--model", "cvt-tiny"],
        2,
        "--model cvt-tiny is an architecture without released weights",
    ),
    Row(
        "output-under-a-file",
        lambda w: _eval(w, "fox_dog", "fox.safetensors", "-o", str(w / "afile" / "r.json")),
        1,
        "afile/r.json: cannot write",
        dest="afile",
    ),
    Row(
        "output-is-a-directory",
        lambda w: _eval(w, "fox_dog", "fox.safetensors", "-o", str(w / "adir")),
        1,
        "adir: is a directory",
        dest="adir",
    ),
    Row(
        "confusion-under-a-file",
        lambda w: _eval(w, "fox_dog", "fox.safetensors", "--confusion", str(w / "afile" / "cm.png")),
        1,
        "afile/cm.png: cannot write",
        dest="afile",
    ),
    Row(
        "confusion-is-a-directory",
        lambda w: _eval(
            w, "fox_dog", "fox.safetensors", "-o", str(w / "adir" / "r.json"), "--confusion", str(w / "adir")
        ),
        1,
        "adir: is a directory",
        dest="adir",
    ),
    Row(
        "output-same-as-confusion",
        lambda w: _eval(
            w, "fox_dog", "fox.safetensors", "-o", str(w / "adir" / "x"), "--confusion", str(w / "adir" / "x")
        ),
        2,
        "both name",
        dest="adir",
    ),
    Row(
        "no-readable-image",
        lambda w: [*_eval(w, "corrupt", "fox.safetensors"), "-o", str(w / "adir" / "r.json")],
        1,
        "none of its 1 images could be read",
        dest="adir",
        before_load=False,
    ),
]


def _lines(argv: list[str], capsys) -> tuple[int, list[str], str, float]:
    """``(exit status, stderr lines that are not argparse's usage block, all output, seconds)``."""
    t0 = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals (a bound, a choice) exit through SystemExit
        code = int(e.code or 0)
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    # NOTE argparse prints its usage block before its one error line; that block is the parser's, not ours
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    return code, lines, out + err, seconds


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_cvt_eval_hostile_arguments(row: Row, world: Path, capsys, monkeypatch):
    if row.before_load:  # a check that waited for the model would trip this
        monkeypatch.setattr(eval_command, "_load", lambda *a: pytest.fail("the model was loaded before the check"))
    before = path_state(world / row.dest) if row.dest else None
    code, lines, everything, seconds = _lines(row.argv(world), capsys)
    assert "Traceback" not in everything
    assert len(lines) == 1 and lines[0].startswith("cvt eval: error: ") and row.says in lines[0], lines
    assert code == row.code
    if row.dest:
        assert path_state(world / row.dest) == before, f"{row.dest} changed"
    assert seconds < 10


def test_cvt_eval_refuses_a_read_only_destination_before_loading(world, capsys, monkeypatch):
    monkeypatch.setattr(eval_command, "_load", lambda *a: pytest.fail("the model was loaded before the check"))
    ro = world / "ro"
    ro.mkdir()
    with read_only_dir(ro) as read_only:
        if not read_only:
            pytest.skip("root ignores permission bits, and the immutable flag is not available here")
        code, lines, _, _ = _lines(_eval(world, "fox_dog", "fox.safetensors", "-o", str(ro / "r.json")), capsys)
    assert code == 1 and len(lines) == 1 and f"{ro / 'r.json'}: cannot write" in lines[0] and not os.listdir(ro)


def test_eval_source_reads_digits_lists_and_data_roots(tmp_path):
    held_out = eval_source("digits", 10)
    assert len(held_out) == 360 and sorted(set(held_out.targets)) == list(range(10))
    _imagenet_v2_layout(tmp_path / "root" / "val")
    (tmp_path / "root" / "train").mkdir()
    src = eval_source(tmp_path / "root", 1000)  # a data root: its val/ split
    assert len(src) == 6 and isinstance(src, EvalFiles) and src.mapping.rule == "index"
    (tmp_path / "l.json").write_text(json.dumps([{"path": "root/val/1/0.jpeg", "label": "1"}]))
    assert eval_source(tmp_path / "l.json", 1000).samples[0][1] == 1
