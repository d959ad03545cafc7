"""Optimizer parameter groups, the LR schedule (a pure function), EMA and the resumable distributed sampler."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import cvt
from cvt.core.optim import decays
from cvt.train import lr_at, param_groups
from cvt.train.ema import ModelEma
from cvt.train.optim import build_optimizer
from cvt.train.sampler import EpochBatchSampler, ShardSampler


def test_schedule_warmup_then_cosine():
    kw = dict(total_steps=100, warmup_steps=10, base_lr=1.0, warmup_lr=0.1, min_lr=0.01)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(5, **kw) == pytest.approx(0.55)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(55, **kw) == pytest.approx(0.01 + 0.5 * 0.99)  # half way down the cosine
    assert lr_at(100, **kw) == pytest.approx(0.01) and lr_at(150, **kw) == pytest.approx(0.01)
    after = [lr_at(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert lr_at(0, total_steps=10, warmup_steps=0, base_lr=2.0) == 2.0  # no warm-up
    assert lr_at(7, **kw) == lr_at(7, **kw)  # pure: no state


def test_no_weight_decay_on_norms_biases_and_cls_token():
    model = cvt.create_model("cvt-tiny")
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert "stages.2.cls_token" in nd
    assert all(n.endswith(".bias") or "norm" in n or ".bn." in n or "cls_token" in n for n in nd)
    assert "stages.0.blocks.0.attn.conv_proj_k.conv.weight" in d  # depthwise convs ARE decayed (official)
    assert "head.weight" in d and "stages.0.patch_embed.proj.weight" in d
    assert len(d) + len(nd) == len(list(model.parameters()))


def _decayed_names(model: torch.nn.Module) -> set[str]:
    """The native names torch's :func:`param_groups` puts in the decayed group."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in param_groups(model, 0.05)[0]["params"]}


def test_the_core_rule_by_native_name_and_shape():
    assert decays("stages.0.blocks.0.mlp.fc1.weight", 2) and decays("stages.0.patch_embed.proj.weight", 4)
    assert decays("stages.0.blocks.0.attn.conv_proj_q.conv.weight", 4)  # depthwise: decayed (official)
    assert not decays("head.bias", 1) and not decays("stages.2.cls_token", 3)
    assert not decays("norm.weight", 1) and not decays("stages.0.blocks.0.attn.conv_proj_q.bn.weight", 1)
    assert not decays("pos_embed", 3, skip={"pos_embed"}) and not decays("body.pos_embed", 3, skip={"pos_embed"})
    assert decays("body.my_pos_embed", 3, skip={"pos_embed"})  # a suffix after a dot, not any substring


@pytest.mark.keras
@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras is not installed")
def test_keras_compile_decays_what_torch_decays():
    """``CvTImageClassifier.compile()``'s AdamW decays exactly the variables whose native names torch decays."""
    config = cvt.get_config("cvt-tiny")
    code = textwrap.dedent(
        f"""
        import json
        import cvt.keras as ck
        from cvt.core import CvTConfig
        model = ck.create_model(CvTConfig.from_dict({config.to_dict()!r}))
        model.compile()
        variables = ck.native_variables(model).items()
        # NOTE _use_weight_decay is Keras' own per-variable decision (what AdamW applies)
        print(json.dumps([n for n, (v, _) in variables if v.trainable and model.optimizer._use_weight_decay(v)]))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    keras_decayed = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    torch_decayed = _decayed_names(cvt.create_model(config))
    assert keras_decayed == torch_decayed
    assert "stages.2.cls_token" not in keras_decayed
    assert "stages.0.blocks.0.attn.conv_proj_q.conv.weight" in keras_decayed


def test_build_optimizer_adamw_and_sgd():
    model = cvt.create_model("cvt-tiny")
    opt = build_optimizer(model, "adamw", 1e-3, betas=(0.8, 0.99))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 1e-3
    assert opt.param_groups[0]["betas"] == (0.8, 0.99) and opt.param_groups[0]["weight_decay"] == 0.05
    opt = build_optimizer(model, "sgd", 0.01, momentum=0.9, weight_decay=0.0)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="not one of adamw, sgd"):
        build_optimizer(model, "lamb", 0.01)


def test_ema_follows_the_model():
    model = torch.nn.Linear(2, 2)
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update(model)
    d = min(0.5, 2 / 11)  # the warm-up ramp (1 + n) / (10 + n) at n = 1
    assert torch.allclose(ema.module.weight, d * before + (1 - d) * model.weight)
    state = ema.state_dict()
    other = ModelEma(model, decay=0.5)
    other.load_state_dict(state)
    assert other.updates == 1 and torch.equal(other.module.weight, ema.module.weight)


def _batches(sampler: EpochBatchSampler) -> list[list[int]]:
    return [[i for i, _ in b] for b in sampler]


def test_sampler_processes_and_accumulation_see_the_same_global_batches():
    one = EpochBatchSampler(50, 8, seed=3)
    one.set_epoch(2)
    global_batches = _batches(one)
    assert len(global_batches) == 6 == len(one) and all(len(b) == 8 for b in global_batches)  # drop_last
    ranks = []
    for r in range(2):
        s = EpochBatchSampler(50, 8, rank=r, world_size=2, accum_steps=2, seed=3)
        s.set_epoch(2)
        ranks.append(_batches(s))
        assert len(ranks[-1]) == 12 and all(len(b) == 2 for b in ranks[-1])
    for step, gb in enumerate(global_batches):
        mine = [i for r in range(2) for b in ranks[r][2 * step : 2 * step + 2] for i in b]
        assert sorted(mine) == sorted(gb)
    assert all(e == 2 for b in one for _, e in b)  # the epoch travels with the index (augmentation seed)


def test_sampler_resumes_mid_epoch_and_reshuffles_per_epoch():
    s = EpochBatchSampler(40, 4, seed=0)
    s.set_epoch(1)
    full = _batches(s)
    s.set_epoch(1, start_step=3)
    assert _batches(s) == full[3:] and len(s) == 7
    s.set_epoch(2)
    assert _batches(s) != full
    with pytest.raises(ValueError, match="not divisible"):
        EpochBatchSampler(40, 6, world_size=4)


def test_shard_sampler_covers_everything_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert math.isclose(sum(len(s) for s in shards), 11)
