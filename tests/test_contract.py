"""timm's model contract, for every registered architecture (the semantics of timm's ``tests/test_models.py``).

Inputs are small (64x64, non-square 64x96) so the real-size architectures stay fast; cvt-w24 (277M parameters)
runs under the ``slow`` marker only.
"""

import copy
import functools
import math
import re

import pytest
import torch

import cvt
from cvt.core.presets import ARCHITECTURES
from cvt.core.spec import PretrainedSpec
from cvt.torch.factory import CvTFeatures
from cvt.torch.model import CvT

NAMES = [pytest.param(n, marks=pytest.mark.slow) if n == "cvt-w24" else n for n in sorted(ARCHITECTURES)]
SIZE = (64, 96)  # non-square: catches H/W mix-ups


def _input(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *SIZE)


@functools.cache
def _built(name: str) -> CvT:
    return cvt.create_model(name)


def _model(name: str) -> CvT:
    """A fresh ``create_model(name)`` (a copy of one built per architecture: initialisation is the slow part)."""
    return copy.deepcopy(_built(name))


@pytest.mark.parametrize("name", NAMES)
def test_forward(name):
    model = _model(name).eval()
    x = _input()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes) and not torch.isnan(out).any()
        assert torch.equal(out, model.forward_head(model.forward_features(x)))
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert isinstance(model.pretrained_cfg, PretrainedSpec)


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    model = _model(name)
    model.reset_classifier(42)  # = create_model(name, num_classes=42)
    model.train()
    out = model(_input(2))
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name):
    model = _model(name).eval()
    x = _input()
    info = model.feature_info
    assert len(info) == len(model.config.stages) >= 3
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, output_fmt="NCHW")
        assert torch.equal(final, model.forward_features(x))
        assert len(maps) == len(info)
        for fi, m, (c, h, w) in zip(info, maps, model.config.feature_shapes(*SIZE)):
            assert m.shape == (1, fi["num_chs"], h, w) == (1, c, h, w) and not torch.isnan(m).any()
            assert h <= math.ceil(SIZE[0] / fi["reduction"]) + 1 and w <= math.ceil(SIZE[1] / fi["reduction"]) + 1
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert isinstance(only, list) and len(only) == 2
        torch.testing.assert_close(only, maps[-2:], rtol=0, atol=0)
        torch.testing.assert_close(model.forward_intermediates(x, indices=[0, -1])[1], [maps[0], maps[-1]])
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed, model.norm(maps[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    n = len(info)
    for bad in (n + 1, 0, -1, [n], [-n - 1], []):
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", NAMES)
def test_prune_intermediate_layers(name):
    reference = _model(name).eval()
    x = _input()
    with torch.no_grad():
        maps = reference.forward_intermediates(x, intermediates_only=True)
    n = len(maps)
    for indices, kept in ((1, [n - 1]), ([0], [0]), ([0, 1], [0, 1])):
        model = copy.deepcopy(reference)
        assert model.prune_intermediate_layers(indices) == kept
        assert len(model.stages) == kept[-1] + 1 == len(model.feature_info)
        assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
        assert model.num_features == model.feature_info[-1]["num_chs"]
        with torch.no_grad():
            got = model.forward_intermediates(x, indices=kept, intermediates_only=True)
            assert model(x).shape == (1, model.num_features)  # pooled features of the last kept stage
        torch.testing.assert_close(got, [maps[i] for i in kept], rtol=0, atol=0)
    with pytest.raises(ValueError, match="prune_head"):
        reference.prune_intermediate_layers([0], prune_head=False)
    assert len(reference.stages) == n  # refused before changing anything


@pytest.mark.parametrize("name", NAMES)
def test_features_only(name):
    model = cvt.create_model(name, features_only=True, out_indices=(0, 1, 2)).eval()
    assert isinstance(model, CvTFeatures)
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == len(reductions) == 3 and model.feature_info[0]["module"] == "stages.0"
    with torch.no_grad():
        out = model(_input())  # batch 1, non-square
    assert len(out) == len(channels)
    for c, r, o in zip(channels, reductions, out):
        assert o.shape[:2] == (1, c) and not torch.isnan(o).any()
        assert o.shape[2] <= math.ceil(SIZE[0] / r) + 1 and o.shape[3] <= math.ceil(SIZE[1] / r) + 1
    last = CvTFeatures(_model(name), out_indices=1)  # an int: the last n
    assert last.feature_info.channels() == channels[-1:] and last.out_indices == [2]
    first = CvTFeatures(_model(name), out_indices=[0])
    assert len(first.model.stages) == 1 and first.feature_info.reduction() == reductions[:1]


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier_gives_pooled_features(name):
    model = _model(name).eval()
    x = _input()
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 == model.config.num_classes
        torch.testing.assert_close(model(x), pre, rtol=0, atol=0)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7) and model.config.num_classes == model.num_classes == 7
    assert cvt.create_model(name, num_classes=0).eval()(x).shape == (1, model.num_features)


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_gives_identical_outputs(name):
    model = _model(name).train()
    x = _input(2)
    state = torch.random.get_rng_state()
    ref = model(x)
    model.set_grad_checkpointing(True)
    torch.random.set_rng_state(state)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_intermediates(x)[0], model.forward_features(x))


@pytest.mark.parametrize("name", NAMES)
def test_group_matcher_orders_every_parameter(name):
    """timm's layer-decay grouping: every parameter but the head's matches; groups follow depth."""
    with torch.device("meta"):
        model = CvT(cvt.get_config(name))
    for coarse in (False, True):
        groups = []
        for pname, _ in model.named_parameters():
            key = _group_key(model.group_matcher(coarse), pname)
            assert (key is None) == pname.startswith("head."), pname
            if key is not None:
                groups.append(groups[-1] if key[-1] == 99999 else key)  # timm's MATCH_PREV_GROUP
        assert groups == sorted(groups), "parameter order is depth order"
        depths = [s.depth for s in model.config.stages]
        assert len(set(groups)) == (1 + sum(depths) if not coarse else 1 + len(depths))


def _group_key(matcher: dict, name: str) -> tuple[float, ...] | None:
    """timm's ``group_with_matcher`` key: (group ordinal, regex groups..., suffix...), first match wins."""
    for ordinal, spec in enumerate(matcher.values()):
        for pattern, suffix in spec if isinstance(spec, list) else [(spec, None)]:
            m = re.match(pattern, name)
            if m:
                return tuple(float(v) for v in (ordinal, *m.groups(), *(suffix or ())))
    return None


def test_no_weight_decay_names_exist():
    model = cvt.create_model("cvt-tiny")
    assert model.no_weight_decay() <= dict(model.named_parameters()).keys()


# ---------------------------------------------------------------------------- timm's dialect (no timm needed)
def test_create_model_takes_timms_common_kwargs():
    model = cvt.create_model("cvt-tiny", drop_rate=0.25, drop_path_rate=0.2, global_pool="token")
    assert model.config.head_drop_rate == 0.25 and model.global_pool == "token"
    # a float: the last stage's rate, earlier stages 0 (the official DROP_PATH_RATE [0, 0, x]), ramped per block
    assert [s.drop_path_rate for s in model.config.stages] == [0.0, 0.0, 0.2]
    assert [b.drop_path.p for b in model.stages[2].blocks] == pytest.approx([0.0, 0.1, 0.2])
    per_stage = cvt.create_model("cvt-tiny", drop_path_rate=(0.1, 0.2, 0.3))
    assert [s.drop_path_rate for s in per_stage.config.stages] == [0.1, 0.2, 0.3]
    assert [b.drop_path.p for b in per_stage.stages[1].blocks] == pytest.approx([0.0, 0.2])
    kept = cvt.create_model("cvt-tiny")  # not given: the architecture's own (0.1 in the last stage)
    assert [s.drop_path_rate for s in kept.config.stages] == [0.0, 0.0, 0.1] and kept.config.head_drop_rate == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bogus": 1, "other": 2}, r"create_model: unknown keyword arguments bogus, other \(accepted: .*drop_rate"),
        ({"drop_block_rate": 0.1}, r"unknown keyword argument drop_block_rate \(accepted: .*global_pool"),
        ({"global_pool": "avg"}, r"global_pool: 'avg' is not supported; cvt-tiny pools by its cls token \('token'"),
        ({"drop_path_rate": [0.1, 0.2]}, r"drop_path_rate: expected a float .* or 3 per-stage rates"),
        ({"drop_path_rate": 1.0}, r"stages\[2\]\.drop_path_rate: must be in \[0, 1\)"),
        ({"drop_rate": 1.5}, r"drop_rate: must be in \[0, 1\)"),
        (
            {"pretrained_cfg_overlay": {"url": "x"}},
            r"pretrained_cfg_overlay: 'url' cannot be applied .*file, num_classes\)",
        ),
        ({"pretrained_cfg_overlay": {"input_size": (3, 64, 32)}}, r"input_size: cvt's preprocessing takes \(3, s, s\)"),
        ({"pretrained_cfg_overlay": {"crop_mode": "border"}}, r"crop_mode: 'border' is not supported"),
    ],
)
def test_unusable_kwargs_are_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        cvt.create_model("cvt-tiny", **kwargs)
    assert isinstance(e.value, cvt.CvtError) and "\n" not in str(e.value)


def test_pretrained_cfg_reads_as_timms_dict():
    model = cvt.create_model("cvt-13-384")
    spec = model.pretrained_cfg
    assert isinstance(spec, PretrainedSpec) and model.default_cfg is spec  # the typed spec, as before
    assert spec["input_size"] == (3, 384, 384) and spec["crop_pct"] == 1.0 and spec["crop_mode"] == "squash"
    assert spec.get("mean") == (0.485, 0.456, 0.406) and spec.get("interpolation") == "bicubic"
    assert spec["num_classes"] == 1000 and spec["first_conv"] == "stages.0.patch_embed.proj"
    assert spec["classifier"] == "head" and spec.get("hf_hub_id") is None and "url" not in spec
    assert dict(spec) == spec.to_timm() and spec.preprocess.img_size == 384  # both views
    crop = cvt.create_model("cvt-tiny", pretrained_cfg_overlay={"label_names": ["a", "b"]}, num_classes=2)
    assert crop.pretrained_cfg["crop_mode"] == "center" and crop.pretrained_cfg["label_names"] == ("a", "b")
    # timm-style code that assigns a timm dict keeps our code working: it is read back as a spec
    model.pretrained_cfg = {"input_size": (3, 256, 256), "crop_pct": 0.9, "url": "ignored", "hf_hub_id": None}
    assert isinstance(model.pretrained_cfg, PretrainedSpec) and model.default_cfg["input_size"] == (3, 256, 256)
    assert model.pretrained_cfg.preprocess.crop_pct == 0.9 and model.pretrained_cfg["crop_mode"] == "center"
    named = PretrainedSpec(labels=["x", "y"], license="MIT")
    assert PretrainedSpec.from_timm(dict(named)) == named and hash(named) == hash(PretrainedSpec.from_timm(named))


def test_pretrained_cfg_overlay_changes_the_spec_and_file_gives_weights(tmp_path):
    from cvt.torch.weights import save_native

    overlay = {"input_size": (3, 96, 96), "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    model = cvt.create_model("cvt-tiny", pretrained_cfg_overlay=overlay)
    pre = model.pretrained_cfg.preprocess
    assert (pre.img_size, pre.crop_pct, pre.mean, pre.std) == (96, 1.0, (0.5,) * 3, (0.5,) * 3)
    assert model.pretrained_cfg["crop_mode"] == "squash"
    source = cvt.create_model("cvt-tiny").eval()
    path = save_native(source.state_dict(), source.config, tmp_path / "t.safetensors")
    # timm's spelling for local weights: pretrained=True with the overlay's file (train.py --pretrained-path adds
    # num_classes=-1, "adapt the head", which cvt does from the file's head on its own)
    overlay = {"file": str(path), "num_classes": -1}
    loaded = cvt.create_model("cvt-tiny", pretrained=True, pretrained_cfg_overlay=overlay)
    assert loaded.load_report.ok and torch.equal(loaded.head.weight, source.head.weight)
    with pytest.raises(ValueError, match="pretrained_cfg_overlay: give weights either as weights= or as its 'file'"):
        cvt.create_model("cvt-tiny", weights=path, pretrained_cfg_overlay={"file": str(path)})


def test_head_dropout_is_timms_drop_rate_and_round_trips(tmp_path):
    from cvt.torch.weights import save_native

    model = cvt.create_model("cvt-tiny", drop_rate=0.5)
    x = _input(4)
    plain = copy.deepcopy(model)
    plain.config = plain.config.replace(head_drop_rate=0.0)
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model.eval().forward_head(feats), plain.eval().forward_head(feats))  # eval: none
        model.train()
        dropped = model.forward_head(feats, pre_logits=True)  # as timm, on the pooled features
        assert (dropped == 0).float().mean() > 0.3
    assert "head_drop_rate" not in cvt.get_config("cvt-tiny").to_dict()  # files stay as cvt 0.3 wrote them
    path = save_native(model.state_dict(), model.config, tmp_path / "d.safetensors")
    assert cvt.create_model(weights=path).config.head_drop_rate == 0.5


def test_reset_classifier_takes_timms_global_pool():
    import dataclasses

    model = _model("cvt-tiny")
    model.reset_classifier(5, global_pool="token")
    model.reset_classifier(6, None)
    assert model.head.out_features == 6
    with pytest.raises(ValueError, match=r"global_pool: 'avg' is not supported") as e:
        model.reset_classifier(3, global_pool="avg")
    assert isinstance(e.value, cvt.CvtError) and model.head.out_features == 6  # refused before changing anything
    base = cvt.get_config("cvt-tiny")
    no_cls = CvT(base.replace(stages=tuple(dataclasses.replace(s, cls_token=False) for s in base.stages)))
    assert no_cls.global_pool == "avg"
    no_cls.reset_classifier(2, global_pool="avg")
