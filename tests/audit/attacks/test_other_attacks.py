"""False positives from noise, OOD, latent-space search and generator manipulation on the fragile model, whose
decision is a threshold at 0 HU on the smoothed central region mean, so what each attack can reach is known."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from audit.attacks import FalsePositive, GeneratorManipulation, LatentSearch, OutOfDistribution, Target, run_attack
from tests.audit.attacks import nets


@pytest.mark.parametrize("eps,expected", [(80.0, 0.0), (220.0, 1.0)])
def test_false_positive_from_uniform_noise(fragile, eps, expected):
    """Uniform U(-200, -100) HU has region mean ~ -150 HU: an L-inf budget of 80 HU cannot reach 0, 220 HU always can."""
    target = Target.from_model(fragile)
    attack = FalsePositive(target, eps=eps, steps=15, noise_low=-200.0, noise_high=-100.0)
    res = run_attack(attack, fragile, nets.images(10), seed=3)
    s = res.summary()
    assert s["deployed_success_rate"] == expected and s["torch_success_rate"] == expected
    assert s["max_linf"] <= eps * (1 + 1e-5)
    if expected:
        assert (res.adv_labels == 1).all()
    # The table's "clean" column is the uniform-noise start the success is judged against (called negative at
    # ~ -150 HU), not the real image: a row shows a flip exactly when it is counted as one.
    assert (res.clean_labels == 0).all()
    assert ((res.adv_labels != res.clean_labels) == res.deployed_flips.any(1)).all()


@pytest.mark.parametrize("eps,expected", [(20.0, 0.0), (100.0, 1.0)])
def test_ood_attack_matches_the_clean_decision(fragile, eps, expected):
    """OOD start: flat +30 HU (called positive); clean images sit at ~ -60 HU (negative). Matching the clean
    decision needs the region mean below 0: out of reach at 20 HU, within reach at 100 HU. (Far brighter starts
    saturate the sigmoid to exactly 1 in float32, where no gradient attack can move.)"""
    hu = nets.images(8, spread_hu=5.0, seed=2) - 60.0
    ood = np.full((3, *nets.SHAPE), 30.0, np.float32)
    attack = OutOfDistribution(Target.from_model(fragile), ood=ood, eps=eps, steps=15, space="hu")
    res = run_attack(attack, fragile, hu, seed=0)
    assert res.summary()["deployed_success_rate"] == expected
    assert res.summary()["max_linf"] <= eps * (1 + 1e-5)


class _LinearGenerator(torch.nn.Module):
    """G(z) = 10 z_0 HU on every pixel (the other latent dimensions are ignored)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, nets.SHAPE[0] * nets.SHAPE[1], bias=False)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, 0] = 10.0

    def forward(self, z):
        return self.fc(z).reshape(-1, *nets.SHAPE)


def test_latent_search_through_an_onnx_generator(fragile, tmp_path):
    path = tmp_path / "gen.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LinearGenerator().eval(), (torch.randn(2, 4),), str(path), input_names=["z"], output_names=["img"],
                          dynamic_axes={"z": {0: "b"}, "img": {0: "b"}}, opset_version=17, dynamo=False)
    hu = np.zeros((16, *nets.SHAPE), np.float32)
    target = Target.from_model(fragile)
    big = run_attack(LatentSearch(target, generator=path, latent_dim=4, eps=4.0, steps=20, radius=11.0, edge=1.0),
                     fragile, hu, seed=5)
    small = run_attack(LatentSearch(target, generator=path, latent_dim=4, eps=1e-3, steps=3, radius=11.0, edge=1.0),
                       fragile, hu, seed=5)
    # z_0 ~ N(0, 1): a budget of 4 crosses 0 from almost every start (P(|z_0| > 4) ~ 6e-5), 1e-3 from almost none
    assert big.summary()["deployed_success_rate"] == 1.0
    assert small.summary()["deployed_success_rate"] <= 1 / 16
    assert big.attack["generator"] == str(path)


def test_generator_manipulation_reports_flip_rate_and_auc(fragile, tmp_path):
    """An ONNX 'generator' that adds 0.15 to the model input (+300 HU) turns every negative positive."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, *nets.SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1, *nets.SHAPE])
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "gen", [x], [y],
                              [helper.make_tensor("c", TensorProto.FLOAT, [], [0.15])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "inject.onnx"))
    hu = nets.images(20, spread_hu=40.0, seed=9)
    labels = (nets.images(20, spread_hu=40.0, seed=9)[:, nets.REGION[0], nets.REGION[1]].mean((1, 2)) > 0).astype(int)
    attack = GeneratorManipulation(Target.from_model(fragile), generator=tmp_path / "inject.onnx", labels=labels)
    res = run_attack(attack, fragile, hu)
    clean = fragile.decide(hu)
    np.testing.assert_array_equal(res.deployed_flips[:, 0], clean.labels == 0)
    extra = attack.extra_report(res, None)
    assert extra["flip_rate"] == pytest.approx((clean.labels == 0).mean())
    assert extra["auc_clean"] >= 0.95 and extra["auc_manipulated"] <= extra["auc_clean"]
