"""One resolution rule for a weight source, whichever verb or front-end reads it.

The same weights (a random transformers CvT with randomised norms) as three files: our native safetensors recording
``gelu``, an HF directory (``save_pretrained``) and an official ``.pth``. Every entry point must build the same
architecture and run the activation the rule gives: the native file's record, ``gelu`` for the HF directory (what
transformers computes), ``quick_gelu`` for the official file (what the released weights were trained with); naming
a released checkpoint asks for ``quick_gelu`` unless a native file records otherwise. Verbs are driven through
``cvt.cli.main``: predict and eval up to the model they build (then stopped, to stay fast), export and convert to
the end, reading back what they wrote.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import cvt
from conftest import TINY_HF, hf_model
from cvt.cli import main
from cvt.core.errors import WeightsError
from cvt.core.keys import convert_state_dict, to_native
from cvt.torch.weights import save_native

EXPECTED_ACTIVATION = {"native": "gelu", "hf": "gelu", "official": "quick_gelu"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resolution")
    torch.manual_seed(3)
    hf = hf_model(**TINY_HF)
    hf.save_pretrained(root / "hf")
    native_sd, _ = to_native(hf.state_dict())
    torch.save(convert_state_dict(native_sd, "native", "official"), root / "official.pth")
    config = cvt.create_model(weights=root / "hf").config  # the HF directory's own architecture
    save_native(native_sd, config.replace(activation="gelu", name="tiny-hf"), root / "native.safetensors")
    return {"native": root / "native.safetensors", "hf": root / "hf", "official": root / "official.pth"}


def _arch(config: cvt.CvTConfig) -> tuple:
    """What must agree everywhere: the stages, the class count and the activation (not the display name)."""
    return config.stages, config.num_classes, config.in_chans, config.activation


class _Stop(Exception):
    """Raised by a spy once a verb has built its model: the rest of the verb is not what is tested here."""


def _spy(monkeypatch, target: str, seen: list) -> None:
    real = _resolve_attr(target)

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs).config)
        raise _Stop

    monkeypatch.setattr(target, spy)


def _resolve_attr(target: str):
    module, name = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("kind", ["native", "hf", "official"])
def test_every_torch_entry_point_resolves_the_same(sources, kind, monkeypatch, capsys, tmp_path):
    path = sources[kind]
    reference = cvt.create_model(weights=path).config
    assert reference.activation == EXPECTED_ACTIVATION[kind]
    assert [s.embed_dim for s in reference.stages] == [16, 32, 48] and reference.num_classes == 10
    # an architecture name (not a released checkpoint's) gives the architecture; the file's activation still applies
    assert cvt.create_model("cvt-tiny", weights=path).config.activation == EXPECTED_ACTIVATION[kind]
    assert cvt.create_model(weights=path, activation="quick_gelu").config.activation == "quick_gelu"  # explicit wins

    assert main(["info", "--weights", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["activation"] == reference.activation and info["num_classes"] == reference.num_classes
    assert [(s["channels"], s["depth"]) for s in info["stages"]] == [(s.embed_dim, s.depth) for s in reference.stages]

    seen: list[cvt.CvTConfig] = []
    _spy(monkeypatch, "cvt.predict.create_model", seen)
    _spy(monkeypatch, "cvt.commands.eval.create_model", seen)
    from PIL import Image

    image = tmp_path / "data" / "cat" / "x.png"  # a labelled folder for eval, one image for predict
    image.parent.mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(image)
    data = str(tmp_path / "data")
    for argv in (["predict", str(image), "--weights", str(path)], ["eval", data, "--weights", str(path)]):
        with pytest.raises(_Stop):
            main(["--debug", *argv])  # --debug lets the spy's exception through
    assert [_arch(c) for c in seen] == [_arch(reference)] * 2

    # convert --to native records the rule's activation ...
    assert main(["convert", str(path), str(tmp_path / "n.safetensors"), "--to", "native"]) == 0
    assert _arch(cvt.create_model(weights=tmp_path / "n.safetensors").config) == _arch(reference)
    # ... and export runs it: the exported logits are those of the rule's activation, not the other one
    assert main(["export", str(tmp_path / "m.pt"), "--weights", str(path), "--format", "torchscript"]) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "m.pt"))(x)
        other = "quick_gelu" if reference.activation == "gelu" else "gelu"
        want = cvt.create_model(weights=path)(x)
        unwanted = cvt.create_model(weights=path, activation=other)(x)
    assert (got - want).abs().max() < 1e-4 < (got - unwanted).abs().max()


def test_flax_resolves_the_same(sources, digits):
    pytest.importorskip("flax")
    import cvt.flax as cf

    for kind, path in sources.items():
        assert _arch(cf.create_model(weights=path).config) == _arch(cvt.create_model(weights=path).config), kind
    with pytest.raises(WeightsError, match=f"^{digits}: holds a cvt-digits model .*, not cvt-13 "):
        cf.create_model("cvt-13", weights=digits)  # the same one line, before any Flax model is built


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed")
def test_keras_resolves_the_same(sources):
    code = textwrap.dedent(
        f"""
        import json
        import cvt.keras as ck
        paths = {json.dumps({k: str(v) for k, v in sources.items()})}
        print(json.dumps({{k: ck.create_model(weights=p).cvt_config.to_dict() for k, p in paths.items()}}))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    keras_configs = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, path in sources.items():
        assert _arch(cvt.CvTConfig.from_dict(keras_configs[kind])) == _arch(cvt.create_model(weights=path).config)


# ---------------------------------------------------------------------------- self-describing files need no --model
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    model = cvt.create_model("cvt-digits").eval()
    return save_native(model.state_dict(), model.config, tmp_path_factory.mktemp("digits") / "final.safetensors")


def test_export_of_a_trained_file_needs_no_model(digits, tmp_path, capsys):
    """``cvt predict --weights final.safetensors`` works without --model: so must ``cvt export``."""
    assert main(["export", str(tmp_path / "d.pt"), "--weights", str(digits), "--format", "torchscript"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert torch.jit.load(str(tmp_path / "d.pt"))(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("verb", ["export", "convert", "info", "predict"])
def test_a_file_that_does_not_fit_says_so_in_one_short_line(digits, tmp_path, capsys, verb):
    weights = ["--weights", str(digits)]
    argv = {
        "export": ["export", str(tmp_path / "m.pt"), "--model", "cvt-13", *weights, "--format", "torchscript"],
        "convert": ["convert", str(digits), str(tmp_path / "o.safetensors"), "--to", "native", "--model", "cvt-13"],
        "info": ["info", "cvt-13", *weights],
        "predict": ["predict", str(digits), "--model", "cvt-13", *weights],  # the model is built before any image
    }[verb]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400, err
    assert err.startswith(
        f"cvt {verb}: error: {digits}: holds a cvt-digits model "
        "(3 stages, widths 64/128/192, depths 1/2/2, 10 classes), "
        "not cvt-13 (3 stages, widths 64/192/384, depths 1/2/10, 1000 classes): "
    ), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_released_checkpoint_name_asks_for_the_official_numerics(hf_cvt13_dir, tmp_path, capsys, monkeypatch):
    """``--model cvt-13 --weights hf_dir``: the released cvt-13 was trained with QuickGELU, so naming it runs that
    (an architecture name alone does not: see above); a native file's own record still wins over the name."""
    path, _ = hf_cvt13_dir
    assert cvt.create_model(weights=path).config.activation == "gelu"
    assert cvt.create_model("cvt-13", weights=path).config.activation == "quick_gelu"
    assert main(["info", "cvt-13", "--weights", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["activation"] == "quick_gelu"
    seen: list[cvt.CvTConfig] = []
    _spy(monkeypatch, "cvt.predict.create_model", seen)
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    with pytest.raises(_Stop):
        main(["--debug", "predict", str(tmp_path / "x.png"), "--model", "cvt-13", "--weights", str(path)])
    assert seen[0].activation == "quick_gelu"
    sd, _ = to_native(cvt.core.weights.read_arrays(path).state_dict)
    gelu13 = cvt.core.weights.save_native_arrays(
        sd, cvt.get_config("cvt-13").replace(activation="gelu"), tmp_path / "g.safetensors"
    )
    assert cvt.core.weights.resolve("cvt-13", weights=gelu13)[0].activation == "gelu"
