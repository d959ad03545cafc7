"""ONNX files carry what serving stacks need (named axes, metadata_props), and ``cvt predict --weights x.onnx``
runs them with onnxruntime: the same top-5 as the PyTorch model on real photos. One export for the module (the
dynamo exporter takes tens of seconds on 2 cores)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import cvt
from conftest import randomize_norms
from cvt.cli import main
from cvt.core import onnxmeta
from cvt.core.errors import WeightsError
from cvt.core.labels import IMAGENET_1K, LabelSet, imagenet_labels
from cvt.core.spec import EvalPreprocess, PretrainedSpec
from cvt.predict import Predictor, PredictorError
from cvt.torch.export import export_model, onnx_metadata
from cvt.torch.weights import save_native
from test_transforms import PHOTOS, photo_paths

pytestmark = pytest.mark.export
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NAMES = [f"thing {i}" for i in range(10)]
SPEC = PretrainedSpec(EvalPreprocess(img_size=64, crop_pct=0.875), NAMES, license="mit", source="tests/tiny")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A randomised cvt-tiny with named classes: its native file and its ONNX export."""
    torch.manual_seed(0)
    model = randomize_norms(cvt.create_model("cvt-tiny")).eval()
    model.pretrained_cfg = SPEC
    root = tmp_path_factory.mktemp("onnx")
    native = save_native(model.state_dict(), model.config, root / "tiny.safetensors", SPEC)
    res = export_model(model, root / "tiny.onnx", "onnx", check_shapes=[(1, 3, 64, 64), (2, 3, 96, 80)])
    return model, native, res.path


def test_dynamic_axes_carry_names(exported):
    _, _, path = exported
    graph = onnx.load(str(path)).graph

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [v.name for v in graph.input] == ["pixel_values"] and [v.name for v in graph.output] == ["logits"]
    assert dims(graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(graph.output[0]) == ["batch", 10]
    # no exporter-generated symbol (s99, s100 ...) left anywhere, intermediate shapes included
    symbols = {d for v in graph.value_info for d in dims(v) if isinstance(d, str)}
    assert symbols and not any(re.search(r"\bs\d+\b", s) for s in symbols)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]


def test_metadata_round_trip(exported):
    model, _, path = exported
    stored = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    # plain strings a serving stack reads without cvt
    assert stored["format_tag"] == "cvt-onnx" and stored["cvt_version"] == cvt.__version__
    assert json.loads(stored["labels"]) == NAMES and stored["activation"] == "quick_gelu"
    assert json.loads(stored["preprocess"]) == {
        "img_size": 64,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert stored["source"] == "tests/tiny" and stored["license"] == "mit"
    meta = onnxmeta.decode_metadata(stored, path)
    assert meta.ours and meta.config == model.config and meta.preprocess == SPEC.preprocess
    assert list(meta.labels) == NAMES and meta.spec(meta.preprocess) == SPEC


def test_named_label_sets_and_fixed_sizes_in_the_metadata():
    """ImageNet checkpoints store the 1000 names (and the set's name); a fixed-size export's preprocessing makes
    that size; a model without names stores the names predictions show."""
    config = cvt.get_config("cvt-13")
    spec = PretrainedSpec(EvalPreprocess.for_size(224), IMAGENET_1K)
    meta = onnxmeta.encode_metadata(config, spec, version="9.9")
    assert json.loads(meta["labels"]) == imagenet_labels() and meta["label_set"] == IMAGENET_1K
    back = onnxmeta.decode_metadata(meta)
    assert back.labels == LabelSet.named(IMAGENET_1K) and back.version == "9.9" and back.activation == "quick_gelu"

    tiny = cvt.create_model("cvt-tiny")
    fixed = json.loads(onnx_metadata(tiny, static_size=96)["preprocess"])
    assert fixed["img_size"] == 96 and fixed["crop_pct"] == tiny.pretrained_cfg.preprocess.crop_pct
    assert json.loads(onnx_metadata(tiny)["labels"]) == [f"class_{i}" for i in range(10)]
    with pytest.raises(WeightsError, match=r"^m\.onnx: metadata 'preprocess' is not JSON"):
        onnxmeta.decode_metadata({"preprocess": "{"}, "m.onnx")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["predict", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_predict_onnx_equals_torch_on_real_photos(exported, capsys):
    _, native, path = exported
    photos = [str(photo_paths()[n]) for n in PHOTOS]
    results = {}
    for weights in (native, path):
        rc, out, err = _cli(capsys, *photos, "--weights", str(weights), "--format", "json", "--device", "cpu")
        assert rc == 0 and err == ""
        results[weights] = json.loads(out)
    torch_rows, onnx_rows = results[native], results[path]
    assert [r["path"] for r in onnx_rows] == photos
    for a, b in zip(torch_rows, onnx_rows):
        assert a["indices"] == b["indices"] and a["labels"] == b["labels"] and len(a["indices"]) == 5
        assert set(a["labels"]) <= set(NAMES)  # the names came from the ONNX file's metadata
        np.testing.assert_allclose(a["probs"], b["probs"], rtol=0, atol=1e-5)
    # the table and the CSV have the same shape as with the PyTorch model
    for fmt in ("table", "csv"):
        texts = [_cli(capsys, *photos[:2], "--weights", str(w), "--format", fmt)[1] for w in (native, path)]
        assert [len(line.split()) for line in texts[0].splitlines()] == [
            len(line.split()) for line in texts[1].splitlines()
        ]
        assert texts[0].splitlines()[0] == texts[1].splitlines()[0]


def _foreign(path, classes: int = 4) -> None:
    """A classifier exported by someone else: pixel_values (N, 3, H, W) -> GlobalAveragePool -> MatMul -> logits,
    no metadata at all."""
    h = onnx.helper
    weight = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 10
    graph = h.make_graph(
        [
            h.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
            h.make_node("Flatten", ["pooled"], ["flat"]),
            h.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "foreign",
        [h.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["n", classes])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=9), str(path))


def test_a_foreign_onnx_file_says_what_is_missing(tmp_path, capsys):
    foreign = tmp_path / "foreign.onnx"
    _foreign(foreign)
    photo = str(photo_paths()["chelsea.png"])
    with pytest.raises(WeightsError, match=r"foreign\.onnx: no cvt metadata 'preprocess' in this ONNX file"):
        Predictor(weights=foreign)
    rc, out, err = _cli(capsys, photo, "--weights", str(foreign))
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("cvt predict: error: ") and "'preprocess'" in err and "cvt export" in err
    # from Python, the caller may supply the preprocessing; labels then follow the usual rule (class_<i> here)
    pre = EvalPreprocess(img_size=32, crop_pct=1.0)
    p = Predictor(weights=foreign, preprocess=pre, topk=4)
    got = p(photo)
    x = p.prepare(photo).numpy()
    logits = x.mean(axis=(1, 2)) @ (np.arange(12, dtype=np.float32).reshape(3, 4) / 10)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert got.indices == list(np.argsort(-probs)) and got.labels == [f"class_{i}" for i in got.indices]
    np.testing.assert_allclose(got.probs, np.sort(probs)[::-1], atol=1e-6)


def test_onnx_arguments_that_cannot_apply_are_refused(exported, tmp_path, capsys):
    _, _, path = exported
    with pytest.raises(PredictorError, match="holds a cvt-tiny, not 'cvt-13'"):
        Predictor("cvt-13", weights=path)
    with pytest.raises(PredictorError, match="computes quick_gelu"):
        Predictor(weights=path, activation="gelu")
    with pytest.raises(PredictorError, match="explain"):
        Predictor(weights=path, explain=True)
    assert Predictor("cvt-tiny", weights=path).model.num_classes == 10  # its own name is fine
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    rc, _, err = _cli(capsys, str(photo_paths()["chelsea.png"]), "--weights", str(tmp_path / "bad.onnx"))
    assert rc == 1 and err.startswith(f"cvt predict: error: {tmp_path / 'bad.onnx'}: onnxruntime cannot load it")
