"""Training recipes: typed loading, --set overrides, and one clear error before training for bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import TINY_SPEC, tiny_recipe
from cvt.cli import main
from cvt.core.errors import DataError
from cvt.data.sources import build_sources
from cvt.train import TrainConfig, TrainConfigError, dry_run, fit, load_config
from cvt.train.config import apply_override, validate

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_default_is_the_digits_recipe_and_configs_digits_spells_it_out():
    default = TrainConfig()
    validate(default)
    assert default.data.kind == "digits" and default.model.name == "cvt-digits"
    assert load_config(CONFIGS / "digits.yaml").to_dict() == default.to_dict()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_state_what_they_promise(path):
    cfg = load_config(path)  # data paths are not checked here (no ImageNet on this machine)
    for key in ("command", "hardware", "time", "expected"):
        assert getattr(cfg.recipe, key).strip(), f"{path.name}: recipe.{key} is empty"
    assert "cvt train" in cfg.recipe.command
    cfg.resolve_model_config(num_classes=10)


def test_imagenet_recipes_match_the_paper():
    c13 = load_config(CONFIGS / "cvt-13-imagenet.yaml")
    c21 = load_config(CONFIGS / "cvt-21-imagenet.yaml")
    w24 = load_config(CONFIGS / "cvt-w24-imagenet.yaml")
    for c in (c13, c21, w24):
        assert c.optim.name == "adamw" and c.data.batch_size == 2048 and c.scaled_lr() == pytest.approx(2e-3)
        assert c.schedule.epochs == 300 and c.schedule.warmup_epochs == 5
        a = c.augment
        assert (a.label_smoothing, a.mixup, a.cutmix, a.random_erasing) == (0.1, 0.8, 1.0, 0.25)
        assert a.randaugment == "rand-m9-mstd0.5-inc1"
    assert (c13.optim.weight_decay, c21.optim.weight_decay, w24.optim.weight_decay) == (0.05, 0.1, 0.1)
    assert w24.resolve_model_config(1000).stages[-1].drop_path_rate == 0.3
    ft = load_config(CONFIGS / "finetune-pets-384.yaml")
    assert ft.optim.name == "sgd" and ft.optim.momentum == 0.9 and ft.data.img_size == 384


def test_lr_scales_linearly_with_the_global_batch():
    cfg = load_config(CONFIGS / "cvt-13-imagenet.yaml", ["data.batch_size=512"])
    assert cfg.scaled_lr() == pytest.approx(5e-4)


def test_overrides_are_typed():
    overrides = [
        "optim.lr=1e-3",
        "augment.scale=[0.5, 1.0]",
        "run.ema=0.99",
        "run.ema=null",
        "schedule.epochs=3",
        "schedule.warmup_epochs=1",
        "data.max_train_samples=10",
    ]
    cfg = load_config(None, overrides)
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads 1e-3 as a string
    assert cfg.augment.scale == (0.5, 1.0) and cfg.run.ema is None and cfg.schedule.epochs == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "optim.lrr: unknown key (valid: name, lr, lr_batch"),
        ("optimizer.lr=1", "optimizer: unknown key (valid: recipe, model, data, augment, optim, schedule, run)"),
        ("optim.lr=fast", "optim.lr: expected a number, got str 'fast'"),
        ("schedule.epochs=2.5", "schedule.epochs: expected an integer, got float 2.5"),
        ("run.compile=yes please", "run.compile: expected true or false"),
        ("augment.scale=[0.5]", "augment.scale: expected a list of 2 values"),
        ("data.kind=imagenet", "data.kind: 'imagenet' is not one of digits, folder, list"),
        ("optim.name=lamb", "optim.name: 'lamb' is not one of adamw, sgd"),
        ("model.name=cvt-99", "model.name: unknown model 'cvt-99' (valid: cvt-13"),
        ("augment.randaugment=rand-x9", "augment.randaugment: 'rand-x9' is not a RandAugment spec"),
        ("augment.randaugment=rand-m9-inc0", "augment.randaugment: 'rand-m9-inc0': inc0 is not supported"),
        ("augment.hflip=1.5", "augment.hflip: must be in [0, 1], got 1.5"),
        ("augment.scale=[0.9, 0.5]", "augment.scale: must be [min, max] with min <= max, got [0.9, 0.5]"),
        ("optim.betas=[0.9, 1.0]", "optim.betas: must be in [0, 1), got (0.9, 1.0)"),
        ("run.threads=0", "run.threads: must be >= 1 or null, got 0"),
        ("optim.lr=.inf", "optim.lr: expected a finite number, got inf"),
        ("optim.accum_steps=3", "optim.accum_steps: 3 does not divide data.batch_size 64"),
        ("schedule.warmup_epochs=50", "schedule.warmup_epochs: must be in [0, epochs=40)"),
        ("data.kind=folder", "data.root: required with data.kind: folder"),
        ("optim.lr", "expected KEY=VALUE"),
    ],
)
def test_bad_recipes_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(TrainConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_interpolations_and_activations_are_the_cores():
    """The recipe accepts every interpolation the evaluation preprocessing does (lanczos too), but lanczos cannot
    drive RandAugment's rotations and shears (PIL's affine transforms refuse it): one line, before any data."""
    from cvt.core.config import ACTIVATIONS
    from cvt.core.spec import INTERPOLATIONS
    from cvt.train import config as train_config

    assert train_config.INTERPOLATIONS is INTERPOLATIONS and train_config.ACTIVATIONS is ACTIVATIONS
    assert load_config(None, ["data.interpolation=lanczos"]).data.interpolation == "lanczos"
    with pytest.raises(TrainConfigError) as e:
        load_config(CONFIGS / "cvt-13-imagenet.yaml", ["data.interpolation=lanczos"])
    message = str(e.value)
    assert message.startswith("data.interpolation: lanczos cannot drive augment.randaugment") and "\n" not in message


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(TrainConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("optim: [1, 2\n")
    with pytest.raises(TrainConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(TrainConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_missing_data_paths_fail_before_training(tmp_path):
    cfg = load_config(None, ["data.kind=folder", f"data.root={tmp_path / 'absent'}"])
    with pytest.raises(TrainConfigError, match=r"data\.root: .* is not a directory"):
        validate(cfg, check_paths=True)
    (tmp_path / "d" / "train").mkdir(parents=True)
    cfg = load_config(None, ["data.kind=folder", f"data.root={tmp_path / 'd'}"])
    with pytest.raises(TrainConfigError, match="has no val/ folder"):
        validate(cfg, check_paths=True)
    cfg = load_config(None, ["data.kind=list", "data.train=a.csv", "data.val=b.csv"])
    with pytest.raises(TrainConfigError, match=r"data\.train: a\.csv: no such file"):
        validate(cfg, check_paths=True)


def _folder(root: Path, split: str, classes: list[str]) -> None:
    from PIL import Image

    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / split / c / "a.png")


def test_classes_in_val_not_in_train_fail_before_training(tmp_path):
    _folder(tmp_path, "train", ["cat", "dog"])
    _folder(tmp_path, "val", ["cat", "dog", "fox"])
    with pytest.raises(DataError) as e:
        build_sources("folder", root=str(tmp_path))
    assert "but not in" in str(e.value) and "fox" in str(e.value) and "cat, dog" in str(e.value)


def test_cli_reports_bad_configs_in_one_line(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"optim": {"lrr": 1}}))
    assert main(["train", "--config", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cvt train: error: optim.lrr: unknown key (valid: ") and err.count("\n") == 1
    _folder(tmp_path / "d", "train", ["a", "b"])
    _folder(tmp_path / "d", "val", ["a", "c"])
    assert main(["train", "--set", "data.kind=folder", f"data.root={tmp_path / 'd'}", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "classes in" in err and "c" in err and err.count("\n") == 1
    assert not (tmp_path / "last.pt").exists()


def test_dry_run_prints_the_resolved_recipe(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out, runs/digits, must not hold a run (a real start would refuse)
    assert main(["train", "--dry-run", "--set", "schedule.epochs=5"]) == 0
    out = capsys.readouterr().out
    resolved = yaml.safe_load(out)
    assert resolved["schedule"]["epochs"] == 5 and resolved["run"]["out"] == "runs/digits"
    assert "# ok: cvt-digits, 1437 training / 360 validation images, 10 classes" in out


def test_a_run_shorter_than_the_default_warmup_warms_up_for_half_of_it():
    notes: list[str] = []
    cfg = load_config(None, ["schedule.epochs=2"], echo=notes.append)
    assert cfg.schedule.warmup_epochs == 1.0 and len(notes) == 1 and "schedule.warmup_epochs: 1" in notes[0]
    assert load_config(None, ["schedule.epochs=3"]).schedule.warmup_epochs == 2.0  # long enough: the default
    with pytest.raises(TrainConfigError, match=r"schedule.warmup_epochs: must be in \[0, epochs=2\)"):
        load_config(None, ["schedule.epochs=2", "schedule.warmup_epochs=2"])  # asked for: not changed


def test_dry_run_is_setup_writing_nothing(tmp_path):
    text = dry_run(overrides=["schedule.epochs=2"], out=tmp_path / "run")
    lines = text.splitlines()
    assert lines[-1] == "# ok: cvt-digits, 1437 training / 360 validation images, 10 classes"
    assert lines[-2] == f"# out: {tmp_path / 'run'}: a new run"
    assert lines[-3].startswith("# note: schedule.warmup_epochs: 1 (half the run)")
    resolved = yaml.safe_load(text)
    assert resolved["schedule"]["warmup_epochs"] == 1.0 and resolved["run"]["out"] == str(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written
    # what stops a real start stops the dry run: here, a global batch larger than the (limited) training set
    with pytest.raises(TrainConfigError, match=r"data\.batch_size: 64 is larger than the training set"):
        dry_run(overrides=["data.max_train_samples=10"], out=tmp_path / "run")
    with pytest.raises(TrainConfigError, match=r"model.weights: .*nope.safetensors: no such file"):
        dry_run(overrides=[f"model.weights={tmp_path / 'nope.safetensors'}"], out=tmp_path / "run")


def test_apply_override_refuses_to_descend_into_a_value():
    raw = {"optim": {"lr": 1.0}}
    with pytest.raises(TrainConfigError, match=r"optim\.lr is not a section"):
        apply_override(raw, "optim.lr.x=1")


# ---------------------------------------------------------------------------- a dry run checks what a start checks
def _recipe_file(tmp_path: Path, **sections) -> Path:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(tiny_recipe(tmp_path / "run", schedule={"epochs": 1, "warmup_epochs": 0}, **sections))
    )
    return recipe


def _stale_metrics(tmp_path: Path) -> list[str]:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 7}\n')  # another run's log
    return []


def _out_is_a_file(tmp_path: Path) -> list[str]:
    (tmp_path / "afile").write_text("not a directory\n")
    return ["--out", str(tmp_path / "afile")]


def _corrupt_weights(tmp_path: Path) -> list[str]:
    (tmp_path / "init.safetensors").write_bytes(b"\x00" * 64)  # exists (the path check passes), unreadable
    return ["--set", f"model.weights={tmp_path / 'init.safetensors'}"]


def _no_readable_image(tmp_path: Path) -> list[str]:
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(10):
                (tmp_path / "d" / split / c / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data = ["data.kind=folder", f"data.root={tmp_path / 'd'}", "data.max_train_samples=null", "data.batch_size=8"]
    return ["--set", *data, "optim.lr_batch=8"]


def _checkpoint_of_another_model(tmp_path: Path) -> list[str]:
    fit(load_config(_recipe_file(tmp_path)), out=tmp_path / "run", echo=lambda s: None)
    wider = json.loads(json.dumps(TINY_SPEC))
    wider["stages"][0]["embed_dim"] = 4
    _recipe_file(tmp_path, model={"spec": wider})  # the recipe changed since: the checkpoint no longer fits
    return ["--resume"]


@pytest.mark.parametrize(
    "world, message",
    [
        (_stale_metrics, "run: holds files of an earlier run but no checkpoint to continue (metrics.jsonl)"),
        (_out_is_a_file, "afile: not a directory (--out names the run directory)"),
        (_corrupt_weights, "init.safetensors: "),
        (_no_readable_image, "d/train: no readable image among its 20 files (first: "),
        (_checkpoint_of_another_model, "last.pt: the checkpoint holds a different model than the recipe"),
    ],
    ids=["stale-metrics", "out-is-a-file", "corrupt-weights", "no-readable-image", "checkpoint-of-another-model"],
)
def test_a_recipe_that_fails_a_real_start_fails_the_dry_run_with_the_same_line(tmp_path, capsys, world, message):
    recipe = _recipe_file(tmp_path)
    args = ["train", "--config", str(recipe), *world(tmp_path)]
    before = _tree(tmp_path)
    dry = main([*args, "--dry-run"])
    dry_err = capsys.readouterr().err
    assert _tree(tmp_path) == before  # the dry run wrote nothing
    real = main(args)
    real_err = capsys.readouterr().err
    assert dry == real == 1
    assert dry_err == real_err and dry_err.count("\n") == 1 and message in dry_err, (dry_err, real_err)
    assert _tree(tmp_path) == before  # the real start failed before writing anything too


def _tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_dry_run_over_a_run_says_what_a_start_would_do(tmp_path, capsys):
    recipe = _recipe_file(tmp_path)
    fit(load_config(recipe), out=tmp_path / "run", echo=lambda s: None)
    assert main(["train", "--config", str(recipe), "--dry-run", "--resume"]) == 0
    assert f"# out: {tmp_path / 'run'}: would resume from {tmp_path / 'run' / 'last.pt'}" in capsys.readouterr().out
    assert main(["train", "--config", str(recipe), "--dry-run", "--overwrite"]) == 0
    assert "would remove the earlier run's files (config.yaml, last.pt, best.pt" in capsys.readouterr().out
    assert (tmp_path / "run" / "last.pt").exists()


# ---------------------------------------------------------------------------- empty class folders
def test_empty_class_folders_are_named_once_or_refused(tmp_path, capsys, caplog):
    root = tmp_path / "d"
    _folder(root, "train", ["cat", "dog"])
    _folder(root, "val", ["cat", "dog"])
    for empty in ("train/emu", "train/yak", "val/yak"):
        (root / empty).mkdir()
    with caplog.at_level("WARNING", logger="cvt"):  # library code warns through logging, not print
        bundle = build_sources("folder", root=str(root))
    assert bundle.classes == ["cat", "dog"]
    assert [r.getMessage() for r in caplog.records] == [
        "warning: data.root: class folders with no images skipped: train/emu, train/yak, val/yak"
    ]
    assert capsys.readouterr().err == ""
    # through a dry run: one warning line on stderr, the run goes on
    recipe = _recipe_file(tmp_path, data={"kind": "folder", "root": str(root), "batch_size": 2})
    assert main(["train", "--config", str(recipe), "--dry-run", "--set", "data.max_train_samples=null"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "train/emu, train/yak, val/yak" in err
    # one class left with images: not a training set
    (root / "train" / "dog" / "a.png").unlink()
    with pytest.raises(DataError) as e:
        build_sources("folder", root=str(root))
    msg = str(e.value)
    assert "has images in 1 class folder (cat); at least 2 classes are needed" in msg
    assert "class folders with no images: dog, emu, yak" in msg
