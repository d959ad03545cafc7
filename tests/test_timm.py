"""cvt inside timm: the registry, timm's data config and transforms, optimizers, checkpoints both ways.

Runs against the real timm in the interop environment (``make interop``; area ``interop`` of tests/areas.py):
timm needs torchvision, which the main environment's CPU torch cannot import.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

timm = pytest.importorskip("timm")
for _module in ("timm.data", "timm.optim", "timm.utils"):  # the parts of timm used here
    importlib.import_module(_module)

import cvt  # noqa: E402
import cvt.timm  # noqa: E402  (registers the models)
from conftest import randomize_norms  # noqa: E402
from cvt.core.errors import UsageError, WeightsError  # noqa: E402
from cvt.core.pickles import read_pickle  # noqa: E402
from cvt.core.preprocess import EvalTransform  # noqa: E402
from cvt.torch.weights import save_native  # noqa: E402

pytestmark = pytest.mark.timm

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _photos() -> list[Path]:
    """Real photos inside the scikit-learn wheel (located, not imported)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-learn is not installed")
    root = Path(spec.origin).parent / "datasets" / "images"
    return [root / "china.jpg", root / "flower.jpg"]


def _tiny(tmp_path: Path, **kwargs) -> tuple[torch.nn.Module, Path]:
    """A randomised cvt-tiny (norm statistics too) and its native file."""
    model = randomize_norms(cvt.create_model("cvt-tiny", **kwargs)).eval()
    path = save_native(model.state_dict(), model.config, tmp_path / "tiny.safetensors", model.pretrained_cfg)
    return model, path


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_registry_lists_every_name_and_the_released_weights():
    names = timm.list_models("cvt*")
    assert names == sorted(cvt.timm.MODELS, key=lambda n: timm.models._registry._natural_key(n))
    assert {"cvt_13", "cvt_21_384", "cvt_w24", "cvt_tiny", "cvt_digits", "cvt_w24_384_22k"} <= set(names)
    released = timm.list_models("cvt*", pretrained=True)
    assert "cvt_13.ms_in1k" in released and "cvt_21_384.ms_in22k_ft_in1k" in released
    assert "cvt_13_384_22k.ms_in22k_ft_in1k" in released and "cvt_w24_384_22k.ms_in22k_ft_in1k" in released
    assert not any(n.startswith(("cvt_tiny", "cvt_digits", "cvt_w24.")) for n in released)
    assert len(released) == 10  # 7 checkpoints: 4 + 3 tags, and the 3 issue spellings again
    cfg = timm.models.get_pretrained_cfg("cvt_21_384_22k")
    assert cfg.hf_hub_id == "microsoft/cvt-21-384-22k" and cfg.crop_mode == "squash" and cfg.input_size == (3, 384, 384)
    assert timm.models.get_pretrained_cfg("cvt_tiny").num_classes == 10


def test_create_model_takes_timm_kwargs():
    model = timm.create_model("cvt_13", num_classes=10, drop_path_rate=0.1, drop_rate=0.2)
    assert isinstance(model, cvt.CvT) and model.head.out_features == 10 and model.num_classes == 10
    # the official per-stage meaning: [0, 0, 0.1], each stage ramping from 0 over its blocks
    assert [s.drop_path_rate for s in model.config.stages] == [0.0, 0.0, 0.1]
    rates = [blk.drop_path.p for blk in model.stages[2].blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and len(rates) == 10
    assert all(blk.drop_path.p == 0.0 for s in model.stages[:2] for blk in s.blocks)
    assert model.config.head_drop_rate == 0.2
    # a tag picks the checkpoint's architecture and preprocessing (random weights without pretrained=True)
    m384 = timm.create_model("cvt_13_384.ms_in22k_ft_in1k", global_pool="token")
    assert m384.config.name == "cvt-13-384-22k" and m384.pretrained_cfg["input_size"] == (3, 384, 384)
    feats = timm.create_model("cvt_tiny", features_only=True, out_indices=(1, 2))
    assert feats.feature_info.channels() == [32, 48] and feats.feature_info.reduction() == [8, 16]


def test_unknown_kwargs_and_unsupported_values_are_one_line():
    with pytest.raises(UsageError) as e:
        timm.create_model("cvt_tiny", bogus=1)
    assert "bogus" in str(e.value) and "drop_path_rate" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UsageError, match=r"global_pool: 'avg' is not supported.*'token'"):
        timm.create_model("cvt_tiny", global_pool="avg")
    with pytest.raises(UsageError, match=r"cvt_tiny: cvt has no released weights"):
        timm.create_model("cvt_tiny", pretrained=True)
    with pytest.raises(UsageError, match=r"unknown pretrained tag 'ms_in22k_ft_in1k' \(tags: ms_in1k\)"):
        timm.create_model("cvt_13.ms_in22k_ft_in1k")


@pytest.mark.parametrize(("name", "size"), [("cvt_13", 224), ("cvt_13_384", 384)])
def test_timm_transforms_equal_cvt_preprocessing_on_real_photos(name, size):
    model = timm.create_model(name)
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg["input_size"] == (3, size, size) and cfg["crop_mode"] == ("center" if size < 384 else "squash")
    timm_transform = timm.data.create_transform(**cfg)
    ours = EvalTransform(model.pretrained_cfg.preprocess)
    for photo in _photos():
        img = Image.open(photo).convert("RGB")
        assert img.size[0] != img.size[1]  # non-square: the crop / squash geometry matters
        theirs = timm_transform(img)
        assert theirs.shape == (3, size, size)
        torch.testing.assert_close(theirs, torch.from_numpy(ours(img)), rtol=0, atol=0)


def test_layer_decay_optimizer_and_training_steps():
    model = timm.create_model("cvt_tiny", num_classes=3, drop_path_rate=0.1, drop_rate=0.1)
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=3e-3, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) > 3 and scales[-1] == 1.0 and scales[0] < 0.75**3  # depth-wise decay from our group_matcher
    head = {id(p) for p in model.head.parameters()}
    assert all(g["lr_scale"] == 1.0 for g in opt.param_groups if head & {id(p) for p in g["params"]})
    x, y = torch.randn(8, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model.train()
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_timm_load_checkpoint_reads_our_native_file(tmp_path):
    ours, path = _tiny(tmp_path)
    theirs = timm.create_model("cvt_tiny")
    timm.models.load_checkpoint(theirs, str(path))  # strict: every key of the file is the model's
    x = torch.randn(2, 3, 64, 80)
    torch.testing.assert_close(_outputs(theirs, x), _outputs(ours, x), rtol=0, atol=0)
    # and timm's create_model(checkpoint_path=...) / pretrained_cfg_overlay=dict(file=...) do the same
    again = timm.create_model("cvt_tiny", checkpoint_path=str(path))
    torch.testing.assert_close(_outputs(again, x), _outputs(ours, x), rtol=0, atol=0)
    local = timm.create_model("cvt_tiny", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert local.load_report.ok
    torch.testing.assert_close(_outputs(local, x), _outputs(ours, x), rtol=0, atol=0)


def _checkpoint_saver_run(tmp_path: Path) -> tuple[torch.nn.Module, torch.nn.Module, Path]:
    """One training step of cvt_tiny with timm's optimizer, EMA and CheckpointSaver, as timm's train.py does."""
    model = randomize_norms(timm.create_model("cvt_tiny", num_classes=4))
    ema = timm.utils.ModelEmaV3(model, decay=0.5)
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-2, layer_decay=0.75)
    args = argparse.Namespace(model="cvt_tiny", num_classes=4, lr=1e-2, opt="adamw", input_size=None, epochs=1)
    saver = timm.utils.CheckpointSaver(
        model, opt, args=args, model_ema=ema, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), max_history=1
    )
    model.train()
    loss = model(torch.randn(4, 3, 64, 64)).logsumexp(dim=1).mean()
    loss.backward()
    opt.step()
    ema.update(model)
    saver.save_checkpoint(epoch=0, metric=50.0)
    best = tmp_path / "model_best.pth.tar"
    assert best.is_file() and (tmp_path / "checkpoint-0.pth.tar").is_file()
    return model.eval(), ema.module.eval(), best


def test_our_loader_reads_timm_checkpoint_saver_files(tmp_path):
    model, ema, best = _checkpoint_saver_run(tmp_path)
    # the unpickler lets the args Namespace and the optimizer state through, and equals torch.load
    raw = read_pickle(best)
    assert isinstance(raw["args"], argparse.Namespace) and raw["args"].model == "cvt_tiny"
    with torch.serialization.safe_globals([argparse.Namespace]):
        ref = torch.load(best, weights_only=True)
    assert set(raw) == set(ref) >= {"state_dict", "state_dict_ema", "optimizer", "args", "epoch", "metric"}
    assert raw["optimizer"]["param_groups"][0]["lr_scale"] == ref["optimizer"]["param_groups"][0]["lr_scale"]
    x = torch.randn(2, 3, 64, 64)
    # cvt.create_model(weights=...) takes state_dict, as timm's validate.py does by default
    loaded = cvt.create_model("cvt-tiny", weights=best)
    assert loaded.num_classes == 4 and loaded.load_report.ok
    torch.testing.assert_close(_outputs(loaded, x), _outputs(model, x), rtol=0, atol=0)
    assert not torch.equal(_outputs(loaded, x), _outputs(ema, x))  # (the EMA weights differ after a step)
    # the EMA weights, on request: written as our native file (architecture from the checkpoint's args.model)
    for use_ema, want in ((True, ema), (False, model)):
        dst = cvt.timm.clean_checkpoint(best, tmp_path / f"ema{use_ema}.safetensors", use_ema=use_ema)
        clean = cvt.create_model(weights=dst)
        assert clean.config.name == "cvt-tiny" and clean.config.activation == "quick_gelu"
        torch.testing.assert_close(_outputs(clean, x), _outputs(want, x), rtol=0, atol=0)


def test_clean_checkpoint_without_ema_says_what_to_do(tmp_path):
    model = timm.create_model("cvt_tiny")
    opt = timm.optim.create_optimizer_v2(model, "sgd", lr=0.1)
    saver = timm.utils.CheckpointSaver(
        model, opt, args=argparse.Namespace(model="cvt_tiny"), checkpoint_dir=str(tmp_path)
    )
    saver.save_checkpoint(epoch=0, metric=1.0)
    with pytest.raises(WeightsError, match=r"holds no EMA weights.*use_ema=False takes its state_dict") as e:
        cvt.timm.clean_checkpoint(tmp_path / "model_best.pth.tar", tmp_path / "x.safetensors", use_ema=True)
    assert "\n" not in str(e.value)


def _hub_cache(root: Path, repo: str, model: torch.nn.Module) -> Path:
    """``model`` saved in huggingface_hub's cache layout (``models--owner--name/snapshots/<commit>``, ``refs/main``)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    path = save_native(model.state_dict(), model.config, folder / "snapshots" / COMMIT / "model.safetensors")
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return path


def test_pretrained_goes_through_cvt_download(tmp_path, monkeypatch):
    """``pretrained=True`` loads through cvt's own download (the hub cache, offline here), not timm's loader."""
    released = randomize_norms(cvt.create_model("cvt-13")).eval()
    _hub_cache(tmp_path / "hub", "microsoft/cvt-13", released)
    x = torch.randn(1, 3, 64, 64)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # timm's cache_dir argument
    model = timm.create_model("cvt_13.ms_in1k", pretrained=True, cache_dir=str(tmp_path / "hub"))
    assert model.load_report.ok and model.config.activation == "quick_gelu"
    assert model.pretrained_cfg.labels is not None and model.pretrained_cfg["num_classes"] == 1000
    torch.testing.assert_close(_outputs(model, x), _outputs(released, x), rtol=0, atol=0)
    # huggingface_hub's own variable, and a new head for fine-tuning
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    tuned = timm.create_model("cvt_13", pretrained=True, num_classes=5)
    assert tuned.num_classes == 5 and "num_classes" not in tuned.pretrained_cfg  # ImageNet's names went
    torch.testing.assert_close(tuned.stages[2].blocks[9].mlp.fc2.weight, released.stages[2].blocks[9].mlp.fc2.weight)
