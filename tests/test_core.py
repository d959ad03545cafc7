"""The framework-free core: importable and useful where torch (and every other framework) cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Runs in a fresh interpreter whose import system refuses torch, TensorFlow, Keras, JAX and Flax.
_BLOCK = """
import importlib.abc, sys
class _NoFramework(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "tensorflow", "keras", "jax", "jaxlib", "flax"}:
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoFramework())
"""


def _run_without_frameworks(code: str, tmp_path) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(_BLOCK + textwrap.dedent(code))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_core_runs_without_any_framework(tmp_path):
    out = _run_without_frameworks(
        """
        import json, pkgutil, importlib, sys
        import numpy as np
        from PIL import Image
        import cvt, cvt.core
        modules = sorted(m.name for m in pkgutil.iter_modules(cvt.core.__path__))
        for m in modules:
            importlib.import_module(f"cvt.core.{m}")
        from cvt.core import get_config, list_models, count_macs, count_params, get_checkpoint
        from cvt.core.keys import convert_state_dict, to_native
        from cvt.core.preprocess import EvalTransform
        from cvt.core.labels import resolve_labels
        from cvt.core.presets import infer_config
        from cvt.core import native
        from cvt.core.files import write_text

        # presets and geometry
        cfg = get_config("cvt-13")
        # key conversion over numpy arrays: official -> native -> HF -> native is the identity
        rng = np.random.default_rng(0)
        sd = {"stage0.patch_embed.proj.weight": rng.standard_normal((64, 3, 7, 7)).astype(np.float32),
              "stage2.blocks.0.attn.conv_proj_k.bn.running_var": np.ones(384, np.float32),
              "head.weight": np.zeros((1000, 384), np.float32)}
        nat, fmt = to_native(sd)
        back = convert_state_dict(convert_state_dict(nat, "native", "hf"), "hf", "native")
        # preprocessing: a real PIL image to a normalised (3, 224, 224) array
        img = Image.fromarray(rng.integers(0, 256, (300, 451, 3), dtype=np.uint8))
        x = EvalTransform(get_checkpoint("cvt-13").spec.preprocess)(img)
        # native metadata round trip
        spec = get_checkpoint("cvt-13-384").spec
        cfg2, spec2 = native.decode_metadata(native.encode_metadata(cfg, spec))
        write_text(sys.argv[0] + ".txt", "ok")
        print(json.dumps({
            "modules": modules, "torch_loaded": "torch" in sys.modules, "n_models": len(list_models()),
            "macs": count_macs(cfg), "params": count_params(cfg), "fmt": fmt,
            "round_trip": all(np.array_equal(nat[k], back[k]) for k in nat) and sorted(nat) == sorted(back),
            "x": [list(x.shape), str(x.dtype)], "labels": resolve_labels(1000, spec.labels)[281],
            "meta_equal": cfg2 == cfg and spec2 == spec,
        }))
        """,
        tmp_path,
    )
    assert {"config", "presets", "keys", "preprocess", "labels", "native", "spec", "errors", "files"} <= set(
        out["modules"]
    )
    assert out["torch_loaded"] is False and out["n_models"] == 10
    assert out["params"] == 19_997_480 and round(out["macs"] / 1e9, 2) == 4.57
    assert out["fmt"] == "official" and out["round_trip"] is True
    assert out["x"] == [[3, 224, 224], "float32"]
    assert out["labels"] == "tabby, tabby cat" and out["meta_equal"] is True


def test_torch_features_name_the_extra_without_torch(tmp_path):
    out = _run_without_frameworks(
        """
        import json
        import cvt
        try:
            cvt.create_model("cvt-13")
        except cvt.CvtError as e:
            print(json.dumps({"msg": str(e), "type": type(e).__name__}))
        """,
        tmp_path,
    )
    assert out["type"] == "MissingDependencyError"
    assert "\\n" not in out["msg"] and "pip install 'cvt-models[torch]'" in out["msg"]


def test_weights_read_as_numpy_without_torch(tmp_path):
    """Native and HF safetensors, and a PyTorch pickle (the official layout), read with numpy alone."""
    import numpy as np
    import torch

    import cvt
    from cvt.torch.weights import save_hf, save_native, save_official

    model = cvt.create_model("cvt-tiny").eval()
    spec = cvt.PretrainedSpec(cvt.EvalPreprocess(img_size=48), labels=tuple("abcdefghij"))
    save_native(model.state_dict(), model.config, tmp_path / "tiny.safetensors", spec)
    save_hf(model.state_dict(), model.config, tmp_path / "hf")
    save_official(model.state_dict(), tmp_path / "tiny.pth")
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    np.savez(tmp_path / "expected.npz", **expected)
    out = _run_without_frameworks(
        f"""
        import json
        import numpy as np
        from cvt.core.weights import read_arrays, resolve, save_native_arrays
        want = dict(np.load({str(tmp_path / "expected.npz")!r}))
        res = {{}}
        for name in ("tiny.safetensors", "hf", "tiny.pth"):
            got = read_arrays({str(tmp_path)!r} + "/" + name)
            res[name] = [got.source_format, sorted(got.state_dict) == sorted(want),
                         all(np.array_equal(got.state_dict[k], want[k]) for k in want)]
        config, spec, loaded = resolve(weights={str(tmp_path / "tiny.safetensors")!r})
        save_native_arrays(loaded.state_dict, config, {str(tmp_path / "again.safetensors")!r}, spec)
        again = resolve(weights={str(tmp_path / "again.safetensors")!r})
        res["again"] = again[0] == config and again[1] == spec
        res["labels"] = list(spec.labels)
        print(json.dumps(res))
        """,
        tmp_path,
    )
    assert out["tiny.safetensors"] == ["native", True, True] and out["hf"] == ["hf", True, True]
    assert out["tiny.pth"] == ["official", True, True]
    assert out["again"] is True and out["labels"] == list("abcdefghij")
    assert torch.equal(cvt.create_model(weights=tmp_path / "again.safetensors").head.weight, model.head.weight)


def test_hf_preprocessor_configs_are_validated():
    import pytest

    from cvt.core.errors import ConfigError
    from cvt.core.spec import EvalPreprocess

    ok = EvalPreprocess.from_hf_processor({"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3})
    assert (ok.img_size, ok.crop_pct, ok.interpolation) == (224, 0.875, "bicubic")
    for bad, field in [
        ([1, 2], "expected a JSON object"),
        ({"size": "big"}, "size"),
        ({"crop_pct": "0.9"}, "crop_pct"),
        ({"resample": 9}, "resample"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
        ({"image_std": [0.2, 0.2, 0]}, "std"),
        ({"crop_pct": 1.5}, "crop_pct"),
    ]:
        with pytest.raises(ConfigError, match=field):
            EvalPreprocess.from_hf_processor(bad)


def test_weight_source_is_one_rule_for_names_and_paths(tmp_path, monkeypatch):
    """A registry name wins over a same-named path; a released name alone means its weights; an architecture alone
    has none; another existing path is weights; anything else is an unknown name."""
    import pytest

    from cvt.core.errors import UnknownModelError
    from cvt.core.presets import WeightSource, weight_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cvt-13").mkdir()  # a folder named like a checkpoint does not shadow it
    (tmp_path / "mine").mkdir()
    assert weight_source("cvt-13").pretrained and weight_source("CVT-13").pretrained  # names are case-blind
    assert weight_source("cvt-13").weights is None and weight_source("cvt-13").has_weights
    assert not weight_source("cvt-tiny").has_weights  # an architecture: random initialisation
    assert weight_source("cvt-tiny", "w.safetensors") == WeightSource("cvt-tiny", "w.safetensors", False)
    assert weight_source("mine") == WeightSource(None, "mine", False)
    with pytest.raises(UnknownModelError, match="cvt-99"):
        weight_source("cvt-99")
