"""Hostile values and outputs (issue 17, classes 3-6): numbers that poison the results, label maps that lie, empty
batches and 0x0 images, control characters and non-UTF-8 names in output, Keras backend choices that cannot export.

The CLI rows use the row style of ``tests/test_hostile.py`` (its runner and assertions): bounded time, exit status,
ONE stderr line naming the file or argument, no traceback, destination unchanged. The other tests call the real
code paths (the core, the torch / Flax models, ``cvt`` in a subprocess for Keras) with tiny models.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file

import cvt
from conftest import TINY_HF, hf_model
from cvt.core.config import hf_labels
from cvt.core.errors import ConfigError, ImageError, LabelError, WeightsError
from cvt.core.evaluation import NonFiniteOutputError, evaluate_folder
from cvt.core.images import to_pil
from cvt.core.labels import load_label_file, resolve_labels
from cvt.core.loading import check_dtypes
from cvt.core.spec import EvalPreprocess, PretrainedSpec
from cvt.core.text import dumps_json, escape_controls, utf8_text
from cvt.torch.weights import save_native
from test_hostile import LIMIT_S, Row, _fingerprint, _run_bounded

LABELS = ("cat", "dog", "fox")
ESC_LABEL = "\x1b]0;pwned\x07\x1b[31mcat"  # OSC retitle + recolour, as a class name


def _with_metadata(src: Path, dst: Path, edit) -> None:
    """Copy a native file with its metadata changed by ``edit(meta)`` (what a hand-edited file holds)."""
    with safe_open(str(src), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        meta = dict(f.metadata())
    edit(meta)
    save_file(tensors, str(dst), metadata=meta)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("hostile_values")
    torch.manual_seed(0)
    cfg = cvt.core.get_config("cvt-tiny").replace(num_classes=3)
    sd = cvt.CvT(cfg).eval().state_dict()
    save_native(sd, cfg, w / "tiny.safetensors", PretrainedSpec(labels=LABELS))
    save_native(sd, cfg, w / "esc.safetensors", PretrainedSpec(labels=(ESC_LABEL, "dog\u202efox", "x\x9by")))
    save_native(sd, cfg, w / "nameless.safetensors", PretrainedSpec())
    # finite weights whose forward pass overflows float32: logits are inf / NaN
    big = dict(sd, **{"norm.bias": torch.full_like(sd["norm.bias"], 1e30)})
    big["head.weight"] = torch.full_like(sd["head.weight"], 1e30)
    save_native(big, cfg, w / "overflow.safetensors", PretrainedSpec(labels=LABELS))
    for dtype in (torch.int32, torch.bool):
        bad = dict(sd, **{"head.bias": torch.zeros(3, dtype=dtype)})
        save_native(bad, cfg, w / f"{str(dtype)[6:]}.safetensors", PretrainedSpec(labels=LABELS))

    def nan_mean(meta):
        spec = json.loads(meta["spec"])
        spec["preprocess"]["mean"] = [float("nan"), 0.5, 0.5]
        meta["spec"] = json.dumps(spec)  # json writes NaN, as a careless writer would

    _with_metadata(w / "tiny.safetensors", w / "nan_mean.safetensors", nan_mean)

    hf_model(**TINY_HF).save_pretrained(w / "hf_inf_std")
    (w / "hf_inf_std" / "preprocessor_config.json").write_text('{"image_std": [Infinity, 0.2, 0.2], "size": 224}')
    hf_model(**{**TINY_HF, "num_labels": 2}).save_pretrained(w / "hf_gaps")
    config = json.loads((w / "hf_gaps" / "config.json").read_text())
    config["id2label"] = {"0": "cat", "2": "dog"}  # index 2 must not be shown as class 1
    config["label2id"] = {"cat": 0, "dog": 2}
    (w / "hf_gaps" / "config.json").write_text(json.dumps(config))

    rng = np.random.default_rng(0)
    for label in LABELS:
        (w / "images" / label).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(w / "images" / label / "0.png")
    # class folders whose names are not UTF-8 (made with bytes paths, as another system's files arrive)
    for name in (b"caf\xe9", b"dog", b"f\xffx"):
        folder = os.path.join(os.fsencode(w / "latin1"), name)
        os.makedirs(folder)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(os.fsdecode(folder) + "/0.png")
    (w / "esc_labels.txt").write_text(f"{ESC_LABEL}\ndog\nfox\n")
    (w / "gapped.json").write_text('{"0": "cat", "1": "dog", "3": "fox"}')
    return w


ROWS = [
    # --- class 3: values that poison the numbers
    Row(
        "predict-nan-mean-in-spec",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "nan_mean.safetensors")],
        1,
        "mean",
    ),
    Row(
        "eval-nan-mean-in-spec",
        lambda w: ["eval", str(w / "images"), "--weights", str(w / "nan_mean.safetensors")],
        1,
        "nan_mean.safetensors",
    ),
    Row(
        "predict-inf-std-in-preprocessor-config",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "hf_inf_std")],
        1,
        "preprocessor_config.json",
    ),
    Row(
        "predict-int32-tensor",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "int32.safetensors")],
        1,
        "head.bias holds int32",
    ),
    Row(
        "predict-bool-tensor",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "bool.safetensors")],
        1,
        "head.bias holds bool",
    ),
    Row(
        "convert-int32-tensor",
        lambda w: ["convert", str(w / "int32.safetensors"), str(w / "out.pth"), "--to", "official"],
        1,
        "int32.safetensors",
        dest="out.pth",
    ),
    Row("info-bool-tensor", lambda w: ["info", str(w / "bool.safetensors")], 1, "bool.safetensors"),
    Row(
        "predict-gapped-id2label",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "hf_gaps")],
        1,
        "without gaps",
    ),
    Row(
        "predict-gapped-labels-file",
        lambda w: [
            "predict",
            str(w / "images"),
            "--weights",
            str(w / "tiny.safetensors"),
            "--labels",
            str(w / "gapped.json"),
        ],
        1,
        "gapped.json",
    ),
    Row(
        "eval-overflowing-weights",
        lambda w: ["eval", str(w / "images"), "--weights", str(w / "overflow.safetensors")],
        1,
        "not finite",
    ),
    Row(
        "eval-overflowing-weights-json",
        lambda w: [
            "eval",
            str(w / "images"),
            "--weights",
            str(w / "overflow.safetensors"),
            "--json",
            "--output",
            str(w / "r.json"),
        ],
        1,
        "not finite",
        dest="r.json",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row: Row, world: Path, capsys):
    capsys.readouterr()
    before = _fingerprint(world / row.dest) if row.dest else None
    code, seconds = _run_bounded(row.argv(world))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, err
    assert lines[0].startswith("cvt ") and ": error: " in lines[0], lines[0]
    assert row.says in lines[0], lines[0]
    assert code == row.code, (code, lines[0])
    assert "nan%" not in out and "%" not in out, out  # never a percentage of a poisoned number
    if row.dest:
        assert _fingerprint(world / row.dest) == before, f"{row.dest} changed"
    assert seconds < LIMIT_S


# ---------------------------------------------------------------------------- class 3: non-finite outputs
def test_predict_overflow_is_an_error_per_input(world: Path, capsys):
    """Each image whose logits overflow gets its own line naming it (exit 1); no percentage is printed."""
    code, _ = _run_bounded(["predict", str(world / "images"), "--weights", str(world / "overflow.safetensors")])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    failed = [line for line in err.splitlines() if "not finite" in line]
    assert len(failed) == 3 and all(line.startswith("cvt predict: error: ") for line in failed)
    assert {Path(line.split(": ")[2]).parent.name for line in failed} == set(LABELS)  # each names its image
    assert "0 classified" in err


def test_predictor_api_names_the_non_finite_input(world: Path):
    p = cvt.Predictor(weights=str(world / "overflow.safetensors"))
    with pytest.raises(NonFiniteOutputError, match=r"images/cat/0\.png: the model's output is not finite"):
        p([str(world / "images" / "cat" / "0.png")])
    with pytest.raises(NonFiniteOutputError, match=r"^input 0: "):
        p(torch.zeros(2, 3, 64, 64))
    results = list(p.iter_files([str(world / "images" / "dog" / "0.png"), str(world / "nope.png")]))
    assert [msg.split(": ", 1)[1][:9] for _, msg in results[0].failures] == ["the model", "no such f"]
    assert results[0].predictions == []


def test_evaluate_folder_refuses_non_finite_scores(world: Path):
    """The Keras / Flax ``evaluate`` path (the core's evaluate_folder): a NaN row is an error naming the image."""
    cfg = cvt.core.get_config("cvt-tiny").replace(num_classes=3)
    spec = PretrainedSpec(labels=LABELS)

    def forward(x: np.ndarray) -> np.ndarray:
        scores = np.tile(np.arange(3.0), (len(x), 1))
        scores[0, 1] = np.nan  # the first image of each batch
        return scores

    with pytest.raises(NonFiniteOutputError, match=r"images/cat/0\.png: .*not finite.*\(3 of 3 images"):
        evaluate_folder(forward, world / "images", cfg, spec, batch_size=1)
    score = evaluate_folder(lambda x: np.tile(np.arange(3.0), (len(x), 1)), world / "images", cfg, spec)
    assert score.n == 3 and score.top1_hits == 1  # finite scores: counted as before


# ---------------------------------------------------------------------------- class 3: preprocessing and dtypes
@pytest.mark.parametrize(
    "field, value",
    [
        ("mean", (math.nan, 0.5, 0.5)),
        ("mean", (0.5, math.inf, 0.5)),
        ("mean", (2.0, 0.5, 0.5)),
        ("std", (0.2, 0.2, 0.0)),
        ("std", (0.2, -math.inf, 0.2)),
        ("std", (1e-9, 0.2, 0.2)),
        ("mean", "abc"),
        ("crop_pct", math.nan),
        ("crop_pct", "0.9"),
    ],
)
def test_preprocess_values_must_be_finite_and_in_range(field, value):
    with pytest.raises(ConfigError, match=field):
        EvalPreprocess(**{field: value})


def test_preprocessor_config_with_nan_is_refused():
    with pytest.raises(ConfigError, match="mean"):
        EvalPreprocess.from_hf_processor({"image_mean": [math.nan, 0.4, 0.4]})
    assert EvalPreprocess.from_hf_processor({"image_mean": [0.5, 0.5, 0.5]}).mean == (0.5, 0.5, 0.5)


def test_dtype_rule_for_every_front_end_is_the_core_one():
    ok = {"w": np.zeros(2, np.float16), "bn.num_batches_tracked": np.zeros((), np.int64)}
    check_dtypes(ok, "f")  # floats and the optional counter pass
    check_dtypes({"w": torch.zeros(2, dtype=torch.bfloat16)}, "f")
    for bad in (np.zeros(2, np.int32), np.zeros(2, bool), torch.zeros(2, dtype=torch.int8)):
        with pytest.raises(WeightsError, match="f: tensor w holds"):
            check_dtypes({"w": bad}, "f")


# ---------------------------------------------------------------------------- class 3: label maps, one rule
def test_id2label_gaps_and_duplicates_are_refused_not_renumbered():
    with pytest.raises(LabelError, match="index 1 is missing"):
        hf_labels({"id2label": {"0": "cat", "2": "dog"}})
    with pytest.raises(LabelError, match="class indices"):
        hf_labels({"id2label": {"0": "cat", "00": "dog"}})
    assert hf_labels({"id2label": {"1": "dog", "0": "cat"}}) == ("cat", "dog")


def test_labels_file_and_list_follow_the_same_rule(world: Path):
    with pytest.raises(LabelError, match=r"gapped\.json: class indices must be 0\.\.2 without gaps"):
        load_label_file(world / "gapped.json")
    with pytest.raises(LabelError, match="has 2 labels but the model has 3 classes"):
        resolve_labels(3, None, ["a", "b"])


# ---------------------------------------------------------------------------- class 5: empty batches, 0x0 images
def test_empty_batches_give_empty_results(world: Path):
    p = cvt.Predictor(weights=str(world / "tiny.safetensors"))
    assert p([]) == [] and p(torch.zeros(0, 3, 64, 64)) == []
    model = cvt.create_model("cvt-tiny", num_classes=3).eval()
    assert tuple(model(torch.zeros(0, 3, 64, 64)).shape) == (0, 3)


@pytest.mark.parametrize(
    "image",
    [np.zeros((0, 0, 3), np.uint8), np.zeros((5, 0), np.uint8), torch.zeros(3, 0, 4, dtype=torch.uint8)],
    ids=["numpy-0x0", "numpy-0x5", "torch-4x0"],
)
def test_images_without_pixels_are_one_line(image):
    with pytest.raises(ImageError, match=r"image has no pixels \(\d+x\d+\)"):
        to_pil(image)


def test_pil_image_without_pixels_is_refused(world: Path):
    p = cvt.Predictor(weights=str(world / "tiny.safetensors"))
    with pytest.raises(ImageError, match=r"no pixels \(0x0\)"):
        p(Image.new("RGB", (0, 0)))


@pytest.mark.flax
def test_flax_empty_batch_and_empty_image():
    jnp = pytest.importorskip("jax.numpy")
    from cvt.flax import create_model
    from cvt.flax.model import jit_forward

    model = create_model("cvt-tiny", num_classes=3)
    assert jit_forward(model)(jnp.zeros((0, 64, 64, 3))).shape == (0, 3)
    assert model(jnp.zeros((0, 64, 64, 3))).shape == (0, 3)
    with pytest.raises(ImageError, match="no pixels"):
        to_pil(jnp.zeros((0, 0, 3), jnp.uint8))


# ---------------------------------------------------------------------------- class 6: output hygiene
def test_escape_controls_and_utf8_text():
    assert escape_controls(ESC_LABEL) == "\\x1b]0;pwned\\x07\\x1b[31mcat"
    assert escape_controls("a\u202eb\x9bc\nd\te") == "a\\u202eb\\x9bc\\x0ad\\x09e"
    assert escape_controls("Café 猫") == "Café 猫"  # printable text is left alone
    assert utf8_text(os.fsdecode(b"caf\xe9")) == "caf\\xe9" and utf8_text("x\ud800") == "x\\ud800"


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_labels_with_control_characters_are_escaped(world: Path, capsys, fmt):
    from_file = ["--weights", str(world / "esc.safetensors")]  # names from the weight file
    from_labels = ["--weights", str(world / "tiny.safetensors"), "--labels", str(world / "esc_labels.txt")]
    for extra in (from_file, from_labels):
        code, _ = _run_bounded(["predict", str(world / "images"), *extra, "--format", fmt, "--topk", "3"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in out), out
        assert "\\x1b]0;pwned\\x07" in out


def test_info_escapes_a_model_name_from_the_file(world: Path, tmp_path, capsys):
    _with_metadata(
        world / "tiny.safetensors",
        tmp_path / "named.safetensors",
        lambda m: m.update(config=json.dumps({**json.loads(m["config"]), "name": "evil\x1b[2J"})),
    )
    code, _ = _run_bounded(["info", str(tmp_path / "named.safetensors")])
    out, _ = capsys.readouterr()
    assert code == 0 and "\x1b" not in out and "evil\\x1b[2J" in out


def test_json_and_csv_are_valid_utf8_for_non_utf8_folder_names(world: Path, tmp_path, capsys):
    """Class folders named in Latin-1: predict JSON / CSV and the eval report are valid UTF-8 and valid JSON."""
    weights = str(world / "nameless.safetensors")
    for fmt in ("json", "csv"):
        code, _ = _run_bounded(["predict", str(world / "latin1"), "--weights", weights, "--format", fmt])
        out, err = capsys.readouterr()
        assert code == 0, err
        text = out.encode("utf-8").decode("utf-8")  # a lone surrogate would fail here
        assert "caf\\xe9" in (json.loads(text)[0]["path"] if fmt == "json" else text) or "caf\\\\xe9" in text
    report = tmp_path / "r.json"
    code, _ = _run_bounded(["eval", str(world / "latin1"), "--weights", weights, "--json", "--output", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err
    for text in (out, report.read_bytes().decode("utf-8")):  # strict UTF-8
        assert "caf\\xe9" in json.loads(text)["per_class"]
    assert json.loads(dumps_json({os.fsdecode(b"f\xffx"): 1})) == {"f\\xffx": 1}


# ---------------------------------------------------------------------------- class 4: Keras backend selection
def _cvt_subprocess(argv: list[str], backend: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "cvt", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT_S * 3, env=env, cwd=tmp_path)


@pytest.mark.keras
@pytest.mark.parametrize(
    "backend, says",
    [("torch", "--format litert: needs Keras' TensorFlow backend"), ("bogus", "KERAS_BACKEND")],
)
def test_keras_backend_that_cannot_export_litert(tmp_path, backend, says):
    pytest.importorskip("keras")
    proc = _cvt_subprocess(["export", "m.tflite", "--model", "cvt-tiny", "--format", "litert"], backend, tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("cvt export: error: ") and says in lines[0], proc.stderr
    assert "pip install" not in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.keras
def test_keras_preprocessor_empty_batch_and_empty_image(tmp_path):
    pytest.importorskip("keras")
    code = (
        "import numpy as np\n"
        "from cvt.keras import CvTImagePreprocessor\n"
        "p = CvTImagePreprocessor(data_format='channels_last')\n"
        "print(p([]).shape, p(np.zeros((0, 32, 32, 3), np.uint8)).shape)\n"
        "try:\n    p(np.zeros((0, 0, 3), np.uint8))\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=LIMIT_S * 3, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "(0, 224, 224, 3) (0, 224, 224, 3)"
    assert lines[1].startswith("ImageError") and "no pixels (0x0)" in lines[1]


def test_class_names_of_another_length_are_refused_in_files_and_writers(tmp_path):
    """The --labels rule for a weight file's own names: 2 names on a 3-class head are an error, never dropped
    silently (reading), and are never written (writing)."""
    from cvt.core.native import FORMAT_TAG
    from cvt.torch.weights import save_native

    cfg = cvt.core.get_config("cvt-tiny").replace(num_classes=3)
    sd = {k: v.numpy() for k, v in cvt.CvT(cfg).state_dict().items()}
    with pytest.raises(LabelError, match="has 2 labels but the model has 3 classes"):
        save_native(cvt.CvT(cfg).state_dict(), cfg, tmp_path / "w.safetensors", cvt.PretrainedSpec(labels=("a", "b")))
    assert not (tmp_path / "w.safetensors").exists()
    spec = {"labels": ["a", "b"]}  # a file written by something else: the reader applies the same rule
    meta = {"format": "pt", "format_tag": FORMAT_TAG, "config": json.dumps(cfg.to_dict()), "spec": json.dumps(spec)}
    save_file(sd, str(tmp_path / "two.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match=r"two\.safetensors: its class names: has 2 labels .* 3 classes"):
        cvt.create_model(weights=tmp_path / "two.safetensors")
