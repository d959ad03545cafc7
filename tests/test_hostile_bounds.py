"""Hostile inputs, round 3, classes 2-4 (issue 17): sizes from files, recipes and options are bounded before use
(:mod:`cvt.core.bounds`), config fields have their JSON types, and malformed configs are one line naming the file.

Rows in the style of ``tests/test_hostile.py``: each runs one ``cvt`` command line and asserts bounded time, the
exit status, ONE stderr line naming the file or argument (shortened values, never an expansion), no traceback and
no temporary files. The rows whose failure mode was memory run again in one child process under ``RLIMIT_AS``.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

import cvt
from conftest import temp_files
from cvt.core import pickles
from cvt.core.spec import PretrainedSpec
from cvt.torch.weights import save_native
from test_hostile import LIMIT_S, _run_bounded

MEMORY_LIMIT = 4 * 2**30  # RLIMIT_AS of the child: torch's import needs ~1-2 GiB of address space, the bombs 3+ GiB


def _native(w: Path, name: str, arrays: dict, meta: dict, config: dict | None = None, spec: dict | None = None) -> None:
    """A copy of the tiny native file with its metadata's config / spec replaced (strings or any JSON)."""
    new = dict(meta)
    if config is not None:
        new["config"] = config if isinstance(config, str) else json.dumps(config)
    if spec is not None:
        new["spec"] = spec if isinstance(spec, str) else json.dumps(spec)
    save_file(arrays, str(w / name), new)


def _hf_dir(w: Path, name: str, arrays: dict, config_text: str) -> None:
    """A directory of bare tensors (``model.safetensors``, no metadata) described by ``config_text``."""
    (w / name).mkdir()
    save_file(arrays, str(w / name / "model.safetensors"))
    (w / name / "config.json").write_text(config_text)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("bounds")
    torch.manual_seed(0)
    cfg = cvt.core.get_config("cvt-tiny").replace(num_classes=3)
    save_native(cvt.CvT(cfg).eval().state_dict(), cfg, w / "tiny.safetensors", PretrainedSpec(labels=("a", "b", "c")))
    from safetensors import safe_open

    with safe_open(str(w / "tiny.safetensors"), "np") as f:
        meta, arrays = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    good = json.loads(meta["config"])

    def stage2(**changes) -> dict:
        c = json.loads(meta["config"])
        c["stages"][2].update(changes)
        return c

    _native(w, "img9000.safetensors", arrays, meta, {**good, "img_size": 9000})
    _native(w, "spec9000.safetensors", arrays, meta, spec={"preprocess": {"img_size": 9000}})
    _native(w, "depth1e9.safetensors", arrays, meta, stage2(depth=1_000_000_000))
    _native(w, "depth5.safetensors", arrays, meta, stage2(depth=5))  # in bounds, but the file holds 3 blocks
    _native(w, "config-list.safetensors", arrays, meta, "[1, 2, 3]")
    _native(w, "config-string.safetensors", arrays, meta, '"cvt-13"')
    _native(w, "config-deep.safetensors", arrays, meta, "[" * 100_000 + "]" * 100_000)
    _native(w, "qkv-string.safetensors", arrays, meta, stage2(qkv_bias="false"))
    _native(w, "stride-float.safetensors", arrays, meta, stage2(patch_stride=2.0))
    _native(w, "stride-string.safetensors", arrays, meta, stage2(patch_stride="2"))
    _native(w, "heads-huge.safetensors", arrays, meta, stage2(num_heads=10**30))
    _native(w, "long-value.safetensors", arrays, meta, stage2(qkv_proj_method="x" * 100_000))
    _native(w, "spec-labels-type.safetensors", arrays, meta, spec={"labels": 5})

    hf = cvt.core.get_config("cvt-tiny").replace(num_classes=3).to_hf_config()
    plain = {k: v for k, v in arrays.items()}
    _hf_dir(w, "hf-list", plain, "[1, 2]")
    _hf_dir(w, "hf-deep", plain, "[" * 100_000 + "]" * 100_000)
    _hf_dir(w, "hf-vit", plain, json.dumps({**hf, "model_type": "vit"}))
    _hf_dir(w, "hf-qkv-string", plain, json.dumps({**hf, "qkv_bias": ["false"] * 3}))
    _hf_dir(w, "hf-channels-string", plain, json.dumps({**hf, "num_channels": "3"}))

    with h5py.File(w / "bomb.h5", "w") as f:  # 3 KB on disk, 3.6 GB if read (HDF5 returns the fill value)
        f.create_dataset("stage0/stage0/patch_embed/proj/conv2d/kernel:0", shape=(30000, 30000), dtype="f4")
    with h5py.File(w / "many.h5", "w") as f:  # each dataset small, together far more than the file stores
        for i in range(20):
            f.create_dataset(f"stage0/stage0/blocks/{i}/mlp/fc1/kernel:0", shape=(4000, 4000), dtype="f4")
    header = json.dumps({"x": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4 * 10**10]}}).encode()
    (w / "huge-header.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    torch.save({"x": torch.zeros(1).as_strided((100000, 100000), (0, 0))}, w / "stride0.pth")  # 1 element stored
    deep = b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b"."  # a legacy file whose state dict nests 5000 lists
    legacy = pickle.dumps(pickles._LEGACY_MAGIC, 2) + pickle.dumps(1001, 2) + pickle.dumps({}, 2)
    (w / "deep.pth").write_bytes(legacy + deep + pickle.dumps([], 2))

    # a 348-byte recipe whose aliases expand to 9^9 leaves
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    (w / "laughs.yaml").write_text("\n".join(lines) + "\n")
    (w / "nested.yaml").write_text("data: " + "[" * 50_000 + "]" * 50_000 + "\n")

    (w / "images").mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(w / "images" / f"{k}.png")
    (w / "labels").mkdir()
    for label in ("a", "b"):
        (w / "labels" / label).mkdir()
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(w / "labels" / label / "0.png")
    return w


@dataclass(frozen=True)
class Row:
    id: str
    argv: Callable[[Path], list[str]]
    code: int
    says: str  # a substring of the one stderr line (the file or argument, and the field)
    memory: bool = False  # the example's failure was memory: also run under RLIMIT_AS in a child


def _info(name: str) -> Callable[[Path], list[str]]:
    return lambda w: ["info", "--weights", str(w / name)]


ROWS = [
    # class 2: sizes from a file, bounded before anything is allocated or built
    Row(
        "predict-img-size-9000",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "img9000.safetensors")],
        1,
        "img_size",
        memory=True,
    ),
    Row(
        "predict-spec-img-size-9000",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "spec9000.safetensors")],
        1,
        "spec",
        memory=True,
    ),
    Row("info-depth-1e9", _info("depth1e9.safetensors"), 1, "stages[2].depth", memory=True),
    Row("info-depth-beyond-tensors", _info("depth5.safetensors"), 1, "depths [1, 2, 5]"),
    Row("info-heads-1e30", _info("heads-huge.safetensors"), 1, "stages[2].num_heads"),
    Row("info-h5-30000x30000", _info("bomb.h5"), 1, "bomb.h5", memory=True),
    Row("info-h5-declares-more-than-stored", _info("many.h5"), 1, "declare", memory=True),
    Row("info-safetensors-huge-header", _info("huge-header.safetensors"), 1, "huge-header.safetensors", memory=True),
    Row("info-pickle-stride-0-view", _info("stride0.pth"), 1, "stride0.pth", memory=True),
    # class 2: recipes and options
    Row(
        "train-yaml-alias-bomb",
        lambda w: ["train", "--config", str(w / "laughs.yaml"), "--out", str(w / "run")],
        2,
        "YAML nodes",
        memory=True,
    ),
    Row(
        "train-yaml-nested",
        lambda w: ["train", "--config", str(w / "nested.yaml"), "--out", str(w / "run")],
        2,
        "nested.yaml",
    ),
    Row(
        "train-long-value-shortened",
        lambda w: ["train", "--out", str(w / "run"), "--set", f"data.mean={list(range(10000))}"],
        2,
        "data.mean",
    ),
    Row(
        "train-workers", lambda w: ["train", "--out", str(w / "run"), "--set", "data.workers=100000"], 2, "data.workers"
    ),
    Row(
        "train-batch",
        lambda w: ["train", "--out", str(w / "run"), "--set", "data.batch_size=1000000000"],
        2,
        "data.batch_size",
    ),
    Row(
        "train-img-size",
        lambda w: ["train", "--out", str(w / "run"), "--set", "data.img_size=9000"],
        2,
        "data.img_size",
    ),
    Row(
        "predict-workers",
        lambda w: ["predict", str(w / "images"), "--weights", str(w / "tiny.safetensors"), "--workers", "100000"],
        2,
        "--workers",
    ),
    Row("predict-batch-size", lambda w: ["predict", str(w / "images"), "--batch-size", "100000000"], 2, "--batch-size"),
    Row(
        "eval-workers",
        lambda w: ["eval", str(w / "labels"), "--weights", str(w / "tiny.safetensors"), "--workers", "100000"],
        2,
        "--workers",
    ),
    Row(
        "export-resolution",
        lambda w: ["export", str(w / "out.onnx"), "--model", "cvt-tiny", "--resolution", "9000"],
        2,
        "--resolution",
    ),
    Row(
        "bench-case-resolution",
        lambda w: ["bench", "--model", "cvt-tiny", "--cases", "infer-9000-b1", "--no-peer"],
        2,
        "infer-9000-b1",
    ),
    Row(
        "bench-case-batch",
        lambda w: ["bench", "--model", "cvt-tiny", "--cases", "infer-64-b100000000", "--no-peer"],
        2,
        "infer-64-b100000000",
    ),
    Row("bench-repeats", lambda w: ["bench", "--model", "cvt-tiny", "--repeats", "1000000000"], 2, "--repeats"),
    Row("serve-workers", lambda w: ["serve", "--workers", "100000"], 2, "--workers"),
    Row("info-resolution", lambda w: ["info", "cvt-tiny", "--resolution", "1000000"], 2, "--resolution"),
    # classes 3 and 4: config fields of the right JSON type, one line naming the file
    Row("info-metadata-config-list", _info("config-list.safetensors"), 1, "metadata config"),
    Row("info-metadata-config-string", _info("config-string.safetensors"), 1, "metadata config"),
    Row("info-metadata-config-deep", _info("config-deep.safetensors"), 1, "metadata config"),
    Row("info-qkv-bias-string", _info("qkv-string.safetensors"), 1, "stages[2].qkv_bias"),
    Row("info-stride-float", _info("stride-float.safetensors"), 1, "stages[2].patch_stride"),
    Row("info-stride-string", _info("stride-string.safetensors"), 1, "stages[2].patch_stride"),
    Row("info-long-value-shortened", _info("long-value.safetensors"), 1, "qkv_proj_method"),
    Row("info-spec-wrong-type", _info("spec-labels-type.safetensors"), 1, "metadata spec"),
    Row("info-hf-config-list", _info("hf-list"), 1, "config.json"),
    Row("info-hf-config-deep", _info("hf-deep"), 1, "config.json"),
    Row("info-hf-model-type-vit", _info("hf-vit"), 1, "model_type 'vit'"),
    Row("info-hf-qkv-bias-string", _info("hf-qkv-string"), 1, "qkv_bias"),
    Row("info-hf-num-channels-string", _info("hf-channels-string"), 1, "in_chans"),
    Row("info-pickle-deeply-nested", _info("deep.pth"), 1, "deep.pth"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row: Row, world: Path, capsys):
    capsys.readouterr()
    code, seconds = _run_bounded(row.argv(world))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, err
    assert lines[0].startswith("cvt ") and ": error: " in lines[0], lines[0]
    assert row.says in lines[0], lines[0]
    assert len(lines[0]) < 600, lines[0]  # long values are shortened, never expanded
    assert code == row.code, (code, lines[0])
    assert not (world / "run").exists() and not (world / "out.onnx").exists()
    assert not temp_files(world), temp_files(world)
    assert seconds < LIMIT_S


_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from cvt.cli import main
import contextlib, io
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except MemoryError:
            code = "MemoryError"
    print(json.dumps([code, err.getvalue()]), flush=True)
"""


def test_memory_rows_stay_within_an_address_space_limit(world: Path):
    """The rows whose examples grew to gigabytes, in one child under RLIMIT_AS: each refused, none a MemoryError."""
    rows = [r for r in ROWS if r.memory]
    argvs = [r.argv(world) for r in rows]
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(limit=MEMORY_LIMIT), json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    results = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("[")]
    assert len(results) == len(rows), child.stderr[-2000:]
    for row, (code, err) in zip(rows, results):
        assert code == row.code, (row.id, code, err)
        assert row.says in err and "Traceback" not in err, (row.id, err)


def test_bounds_policy_names_limit_and_reason():
    """One function checks every size: booleans are no numbers, and the refusal states the range and why."""
    from cvt.core import bounds
    from cvt.core.errors import ConfigError, shorten

    with pytest.raises(ConfigError, match=r"^depth: 1000000000 is outside \[1, 64\] \(blocks per stage"):
        bounds.check(10**9, bounds.DEPTH, "depth")
    with pytest.raises(ConfigError, match="must be a number"):
        bounds.check(True, bounds.DEPTH)
    assert bounds.check(20, bounds.DEPTH) == 20
    nested: list = ["lol"] * 9
    for _ in range(8):
        nested = [nested] * 9
    t0 = time.perf_counter()
    assert len(shorten(nested)) < 200 and len(shorten("x" * 10**6)) < 100
    assert time.perf_counter() - t0 < 1
    for released in cvt.list_models():
        cvt.core.get_config(released).validate()  # every registered model is within the policy


def test_yaml_recipes_with_a_few_aliases_still_load(tmp_path):
    """Bounding alias expansion leaves ordinary anchors alone."""
    from cvt.train.config import load_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {kind: digits, mean: &m [0.5, 0.5, 0.5], std: *m}\n")
    cfg = load_config(recipe)
    assert cfg.data.mean == cfg.data.std == (0.5, 0.5, 0.5)
