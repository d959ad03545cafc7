"""``evaluate`` and ``cvt eval``: metrics, class-folder mapping (ImageNet / ImageNet-V2 layouts), reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import cvt
from cvt.cli import main
from cvt.core.labels import imagenet_wnids
from cvt.data.datasets import DataError, eval_source, map_eval_classes
from cvt.eval import evaluate
from cvt.factory import resolve
from cvt.weights.io import save_native


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
    assert res["n"] == 4 and res["top1"] == 0.5 and res["top5"] == 1.0 and res["skipped"] == 1
    assert res["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert res["per_class"][:4] == [1.0, None, 0.5, 0.0] and res["confusion"][2] == [0, 1, 1, 0, 0, 0]
    assert res["images_per_s"] > 0
    # under torchrun every process sums its shard's numbers with the others' (here: two identical shards)
    twice = evaluate(_Fixed(logits), loader, 6, all_reduce=lambda t: t.mul_(2))
    assert twice["n"] == 8 and twice["top1"] == 0.5 and twice["loss"] == pytest.approx(res["loss"])
    assert twice["confusion"][2] == [0, 2, 2, 0, 0, 0]


def test_class_folders_map_to_the_model_classes():
    wnids = imagenet_wnids()
    # ImageNet val by synset id: the standard order, even for a subset of the classes
    assert map_eval_classes([wnids[281], wnids[0]], 1000) == {wnids[281]: 281, wnids[0]: 0}
    # ImageNet-V2: folders named 0..999
    assert map_eval_classes(["0", "10", "999"], 1000) == {"0": 0, "10": 10, "999": 999}
    # a model trained here: its own labels, whatever the order of the folders
    assert map_eval_classes(["dog", "cat"], 2, ["cat", "dog"]) == {"cat": 0, "dog": 1}
    with pytest.raises(DataError, match="not a class index"):
        map_eval_classes(["0", "12"], 10)
    with pytest.raises(DataError, match="not an ImageNet-1k synset"):
        map_eval_classes(["n00000001"], 1000)
    with pytest.raises(DataError, match="cannot map 3 class folders"):
        map_eval_classes(["a", "b", "c"], 2, ["x", "y"])


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


def test_eval_source_reads_digits_lists_and_data_roots(tmp_path):
    held_out = eval_source("digits", 10)
    assert len(held_out) == 360 and sorted(set(held_out.targets)) == list(range(10))
    _imagenet_v2_layout(tmp_path / "root" / "val")
    (tmp_path / "root" / "train").mkdir()
    src = eval_source(tmp_path / "root", 1000)  # a data root: its val/ split
    assert len(src) == 6
    (tmp_path / "l.json").write_text(json.dumps([{"path": "root/val/1/0.jpeg", "label": "1"}]))
    assert eval_source(tmp_path / "l.json", 1000).samples[0][1] == 1
