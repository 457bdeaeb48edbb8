"""The sequential gate reaches the full gate's verdicts with far fewer inferences, and says which are exact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from audit.config import load_config
from audit.gate import evaluate, load_policy
from audit.pipelines.run import run_config
from audit.pipelines.fast_gate import run_fast_gate
from tests.audit.conftest import REGION, planted_images, write_config, write_manifest
from tests.audit.planted import region_means

NOISE = 'kind = "nps"\nlevels = [25, 400]\ndraws = 100\nseed = 3\nsigma_ref = 40.0'
POLICIES = {
    "clear pass": '[[rule]]\nmetric = "sar"\nlevel = 400\nmax = 0.9\n[[rule]]\nmetric = "sar_class"\nclass = "above"\nlevel = 25\nmax = 0.95\n',
    "clear fail": '[[rule]]\nmetric = "sar"\nlevel = 25\nmax = 0.01\n',
    "san fail": '[[rule]]\nmetric = "san_fraction"\nlevel = 25\nmax = 0.05\n',
    "cmr pass": '[[rule]]\nmetric = "cmr_offdiag"\nlevel = 400\nmax = 0.95\n',
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.audit.planted import planted_model
    from tests.audit.conftest import SHAPE

    tmp = tmp_path_factory.mktemp("fast")
    model = planted_model(tmp / "m.onnx", SHAPE, REGION, 0.0)
    images = planted_images(40, spread_hu=6.0, seed=9)
    manifest = write_manifest(tmp / "data", images, (region_means(images, REGION) >= 0).astype(int))
    config_path = write_config(tmp / "a.toml", model, manifest, noise=NOISE, run="batch_size = 100\nshard_samples = 20")
    full = run_config(load_config(config_path), tmp / "full", progress=False)
    return tmp, config_path, full


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_same_verdicts_as_the_full_gate_with_fewer_inferences(setup, tmp_path, name):
    tmp, config_path, full = setup
    policy = tmp_path / "p.toml"
    policy.write_text(POLICIES[name])
    rules = load_policy(policy)
    expected = {(o.rule, o.model): o.passed for o in evaluate(full, rules)}
    result = run_fast_gate(load_config(config_path), load_policy(policy), tmp_path / "fast", rounds=20)
    got = {(v["rule"], v["model"]): v["passed"] for v in result["verdicts"]}
    assert got == expected
    assert result["inference_ratio"] >= 5, result["inference_ratio"]
    assert all(not v["exact"] for v in result["verdicts"])  # decided early, and marked as bounded
    assert json.loads((tmp_path / "fast" / "gate.json").read_text())["passed"] == all(expected.values())


def test_rules_on_upper_bounds_run_to_full_k_and_are_exact(setup, tmp_path):
    tmp, config_path, full = setup
    policy = tmp_path / "p.toml"
    policy.write_text('[[rule]]\nmetric = "sar"\nlevel = 25\nmax = 0.5\nbound = "upper"\n')
    (expected,) = evaluate(full, load_policy(policy))
    result = run_fast_gate(load_config(config_path), load_policy(policy), tmp_path / "fast", rounds=4)
    (v,) = result["verdicts"]
    assert v["exact"] and v["draws"] == 100 and v["passed"] == expected.passed
    assert v["measured"] == pytest.approx(expected.measured)


def test_cli_exit_code_and_summary(setup, tmp_path):
    _, config_path, _ = setup
    policy = tmp_path / "p.toml"
    policy.write_text(POLICIES["clear fail"])
    proc = subprocess.run([sys.executable, "-m", "audit", "fast-gate", str(config_path), "--policy", str(policy),
                           "--out", str(tmp_path / "g")], capture_output=True, text=True)
    assert proc.returncode == 1 and "fewer" in proc.stdout and "bounded" in proc.stdout
    assert (tmp_path / "g" / "gate-junit.xml").is_file()
