"""PGD: norm bound and valid range always hold; flips on a fragile model, none on a constant one; the deployed
model decides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.attacks import PGD, Target, build_attack, run_attack
from audit.errors import ConfigError
from tests.audit.attacks import nets


@pytest.mark.parametrize("norm,space,eps", [("linf", "hu", 15.0), ("l2", "hu", 300.0), ("linf", "input", 0.02),
                                            ("l2", "input", 0.3)])
def test_pgd_respects_the_norm_bound_and_the_valid_range(small_cnn, norm, space, eps):
    target = Target.from_model(small_cnn)
    hu = nets.images(12, seed=4)
    hu[0, :3, :3] = -1020.0  # near the bottom of the HU range: the clip must bite
    attack = PGD(target, eps=eps, steps=8, norm=norm, space=space, hu_range=(-1024.0, 3071.0), restarts=2)
    cand = attack.perturb(torch.from_numpy(hu), torch.Generator().manual_seed(0)).values[:, 0]
    v0 = attack.start(torch.from_numpy(hu))
    d = (cand - v0).reshape(len(hu), -1)
    if norm == "linf":
        assert float(d.abs().max()) <= eps * (1 + 1e-5)
    else:
        assert float(d.norm(dim=1).max()) <= eps * (1 + 1e-5)
    lo, hi = attack.valid_range
    assert float(cand.min()) >= lo - 1e-6 and float(cand.max()) <= hi + 1e-6
    assert float(d.abs().max()) > 0.5 * eps if norm == "linf" else float(d.norm(dim=1).max()) > 0.5 * eps


def test_pgd_flips_exactly_the_samples_within_reach_on_a_fragile_model(fragile):
    """The fragile model thresholds the smoothed region mean m at 0 HU, so an L-inf perturbation of eps HU can
    flip a sample iff |m| < eps: PGD must find (nearly) all of those and the deployed model must agree."""
    hu = nets.images(48, spread_hu=12.0, seed=5)
    target = Target.from_model(fragile, parity_hu=hu[:4])
    eps = 8.0
    res = run_attack(PGD(target, eps=eps, steps=20, space="hu"), fragile, hu, seed=1)
    smooth = torch.nn.functional.conv2d(torch.from_numpy(hu)[:, None], torch.full((1, 1, 3, 3), 1 / 9), padding=1)
    m = smooth[:, 0, nets.REGION[0], nets.REGION[1]].mean((1, 2)).numpy()
    reachable, far = np.abs(m) < 0.9 * eps, np.abs(m) > 1.1 * eps
    assert reachable.sum() >= 10 and far.sum() >= 10
    flipped = res.deployed_flips[:, 0]
    assert flipped[reachable].mean() >= 0.95
    assert not flipped[far].any()
    s = res.summary()
    assert s["deployed_success_rate"] == pytest.approx(flipped.mean())
    assert abs(s["torch_success_rate"] - s["deployed_success_rate"]) <= 1 / 48
    assert s["max_linf"] <= eps * (1 + 1e-5)
    assert "flipped on the deployed model" in s["verdict"]


@pytest.mark.parametrize("norm,restarts", [("linf", 1), ("l2", 3)])
def test_reported_twin_flips_are_the_twins_decisions_on_the_kept_candidates(fragile, norm, restarts):
    """PGD reports the twin's flips from its own last forward pass; a fresh twin pass must agree on every sample."""
    hu = nets.images(24, spread_hu=12.0, seed=7)
    target = Target.from_model(fragile)
    attack = PGD(target, eps=8.0 if norm == "linf" else 150.0, steps=6, norm=norm, space="hu", restarts=restarts)
    cands = attack.perturb(torch.from_numpy(hu), torch.Generator().manual_seed(3))
    clean = target.decide(target.to_input(torch.from_numpy(hu)))
    again = target.head.flipped(clean, target.decide(target.to_input(cands.values[:, 0])))[0]
    assert 0 < again.sum() < len(hu)
    np.testing.assert_array_equal(cands.twin_flips[:, 0], again)


def test_pgd_finds_nothing_on_a_constant_model_and_says_so(constant):
    target = Target.from_model(constant)
    res = run_attack(PGD(target, eps=0.2, steps=5, restarts=2), constant, nets.images(10), seed=0)
    s = res.summary()
    assert s["san"] == 0 and s["torch_success_rate"] == 0.0 and s["deployed_success_rate"] == 0.0
    assert "no perturbation" in s["verdict"] and "zero gradient" in s["verdict"]


def test_pgd_is_reproducible_from_its_seed(small_cnn):
    target = Target.from_model(small_cnn)
    hu = torch.from_numpy(nets.images(6))
    a = PGD(target, eps=0.05, steps=3).perturb(hu, torch.Generator().manual_seed(7)).values
    b = PGD(target, eps=0.05, steps=3).perturb(hu, torch.Generator().manual_seed(7)).values
    c = PGD(target, eps=0.05, steps=3).perturb(hu, torch.Generator().manual_seed(8)).values
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("params,match", [({"eps": 0.0}, "attack.eps: expected a number > 0"),
                                          ({"eps": -1}, "attack.eps"), ({"steps": 0}, "attack.steps"),
                                          ({"norm": "l1"}, "attack.norm"), ({"space": "pixels"}, "attack.space"),
                                          ({"epsilon": 0.1}, "attack.epsilon: unknown parameter")])
def test_bad_parameters_are_named(small_cnn, params, match):
    target = Target.from_model(small_cnn)
    with pytest.raises(ConfigError, match=match):
        build_attack("pgd", target, **params)


def test_unknown_attack_lists_the_known_ones(small_cnn):
    with pytest.raises(ConfigError, match=r"unknown attack 'fgsm'; expected one of \[.*'pgd'"):
        build_attack("fgsm", Target.from_model(small_cnn))


@pytest.mark.parametrize("twin_from", ["onnx", "module"])
def test_a_saturated_sigmoid_is_attacked_through_its_logit(tmp_path, twin_from):
    """gain 1e5: P = sigmoid(z) is exactly 0 or 1 in float32 for all but a sliver of samples, so its gradient is 0.
    The twin exposes z (through the Unsqueeze/indexing after the Sigmoid) and PGD flips every sample within reach;
    on the probability it would find nothing."""
    net = nets.Fragile(gain=1e5)
    model = nets.audited(nets.export(net, tmp_path / "steep.onnx"))
    hu = nets.images(32, spread_hu=12.0, seed=5)
    module = nets.Fragile(gain=1e5) if twin_from == "module" else None
    target = Target.from_model(model, module, parity_hu=hu[:4])
    assert target.loss_on == "logit (sigmoid)" and target.describe()["loss_on"] == "logit (sigmoid)"
    with torch.no_grad():
        p = target.outputs(target.to_input(torch.from_numpy(hu)))[0]
    assert float(((p == 0) | (p == 1)).float().mean()) >= 0.9, "the test needs saturated outputs"
    eps = 8.0
    res = run_attack(PGD(target, eps=eps, steps=20, space="hu"), model, hu, seed=1)
    smooth = torch.nn.functional.conv2d(torch.from_numpy(hu)[:, None], torch.full((1, 1, 3, 3), 1 / 9), padding=1)
    m = smooth[:, 0, nets.REGION[0], nets.REGION[1]].mean((1, 2)).numpy()
    reachable = np.abs(m) < 0.9 * eps
    assert reachable.sum() >= 8
    assert res.deployed_flips[reachable, 0].mean() >= 0.95
    flat = Target.from_model(model, module, parity_hu=hu[:4], attack_logits=False)
    assert flat.loss_on == "output"
    s = run_attack(PGD(flat, eps=eps, steps=20, space="hu"), model, hu, seed=1).summary()
    assert s["deployed_success_rate"] < 0.25 * res.summary()["deployed_success_rate"]


def test_softmax_outputs_are_attacked_through_their_logits(tmp_path):
    """A multiclass softmax head: the loss reads log_softmax of the exposed logits, and decisions stay the model's."""
    from torch import nn

    class Steep3(nn.Module):
        def __init__(self):
            super().__init__()
            self.fragile = nets.Fragile(gain=1.0)

        def forward(self, x):
            z = (self.fragile.conv(x)[:, 0, 8:16, 8:16].mean(dim=(1, 2)) - 0.5) * 1e5
            return torch.softmax(torch.stack([-z, z, 0 * z - 30.0], dim=1), dim=1)

    import json

    import onnx

    path = nets.export(Steep3(), tmp_path / "steep3.onnx", task="multiclass")
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "audit.class_names":
            prop.value = json.dumps(["below", "above", "never"])
    onnx.save(proto, str(path))
    model = nets.audited(path)
    target = Target.from_model(model, parity_hu=nets.images(4))
    assert target.loss_on == "logit (softmax)"
    hu = nets.images(24, spread_hu=4.0, seed=2)
    res = run_attack(PGD(target, eps=8.0, steps=15, space="hu"), model, hu, seed=0)
    assert res.summary()["deployed_success_rate"] >= 0.9
