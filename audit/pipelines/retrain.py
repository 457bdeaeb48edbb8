"""``audit retrain``: retraining on what the attacks find, adaptive (study 1, Algorithm 2) or adversarial (study 4).

Each round: attack the training samples through the deployed ONNX artifact
(the deployed model decides), add perturbed samples with their original
labels, fine-tune (``models.retrain.finetune``), re-export ONNX with the
parity check, and re-run the same attack on the training and test samples.
Round 0 is the model as built. Every round records AUC (or the task's score)
and SAN on train and test, so robustness and accuracy sit side by side.

Then every round's ONNX artifact is audited against NPS noise on the test
split in one campaign (``audit/report.*``): the rounds are models of the same
campaign, so they see the same keyed noise draws and their SAR per dose is a
paired comparison; the report also holds each round's attack on the test
split. The attack is planned exactly as ``audit attack`` plans it (its first
run: the first eps of a list, the first level of ``nps_ascent``).

Modes: ``adaptive`` adds the successful perturbations only (Algorithm 2);
``pgd`` adds every attacked sample (clean + adversarial, study 4); ``uniform``
adds uniform-noise samples U(-a, a) HU (clean + noise, study 4's baseline).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np

from audit.artifact import open_path
from audit.attacks.blocks import attack_block
from audit.campaign.run import RunOptions, run_campaign
from audit.config import RetrainConfig
from audit.data import ArraySource
from audit.errors import InputError
from audit.io import progress_enabled, write_json, write_text
from audit.pipelines.attack import plan_attacks
from audit.pipelines.run import path_style, write_reports
from audit.report.retrain import attack_rates, audit_rates, render_retrain_html
from models import registry, training
from models.build import cached_build, load_checkpoint, prepare_out
from models.retrain import export_round, finetune, split_metrics

SCHEMA = "audit-retrain/1"


def _attack(config: RetrainConfig, net: Any, onnx_path: Path, hu: np.ndarray, labels: np.ndarray | None, ids: list[str],
            spacing: tuple[float, ...], seed: int):
    """The configured attack on ``hu`` against the ONNX artifact (twin = ``net``), seeded by the round's seed plus
    ``[attack] seed``; the result keeps the attacked model inputs (what adversarial training adds)."""
    model = open_path(onnx_path)
    source = ArraySource(hu, spacing, labels, ids=ids, name="retrain samples")
    plan = plan_attacks(config.attack, model, source, module=copy.deepcopy(net).eval())
    return plan.first_result(hu, ids, seed_offset=seed)


def retrain(config: RetrainConfig, out: str | Path, *, progress: bool | None = None, log=None) -> dict[str, Any]:
    """Run ``config.rounds`` rounds of retraining; writes ``retrain.json``/``.html``, the round ONNX files and (with
    ``config.audit``) ``audit/report.*``: every round's artifact audited on the same noise draws."""
    out = prepare_out(out)
    paths = path_style(out, cache=config.cache_dir)  # how retrain.json writes paths
    if config.audit and (out / "audit" / "campaign.json").exists():
        raise InputError(f"{out / 'audit'}: holds the audit of an earlier retraining; choose another --out")
    built = cached_build(config.model, config.variant, quick=config.quick, cache_dir=config.cache_dir,
                         progress=progress_enabled(progress))
    art = built.artifacts[0]
    bp = registry.get(config.model).blueprint(built.recipe.variant)
    data = bp.make_data(built.recipe.samples, built.recipe.data_seed)
    split = training.make_splits(data.strata, built.recipe)[0]
    rng = np.random.default_rng([config.seed, 17])
    train_idx = np.sort(rng.choice(split.train, min(config.train_samples, split.train.size), replace=False))
    test_idx = np.sort(rng.choice(split.test, min(config.test_samples, split.test.size), replace=False))
    labels = data.targets.get("label")
    net = load_checkpoint(config.model, built.recipe.variant, art.checkpoint)
    onnx_path = art.onnx
    pool_x, pool_t, pool_s = [], {k: [] for k in data.targets}, []
    rounds, onnx_paths, attack_blocks = [], [], []
    spacing = tuple(bp.spacing)

    def attack(idx: np.ndarray, tag: str, seed: int):
        return _attack(config, net, onnx_path, data.hu[idx].astype(np.float32),
                       None if labels is None else np.asarray(labels)[idx].astype(np.int64), [f"{tag}:{i}" for i in idx],
                       spacing, seed)

    for r in range(config.rounds + 1):
        res_train = attack(train_idx, "train", config.seed + 7 * r)
        res_test = attack(test_idx, "test", config.seed + 7 * r + 1)
        rec = {"round": r, "onnx": paths.show(onnx_path), "train": {**split_metrics(bp, net, data, split.train), **_san(res_train)},
               "test": {**split_metrics(bp, net, data, split.test), **_san(res_test)}}
        rounds.append(rec)
        onnx_paths.append(onnx_path)
        attack_blocks.append(attack_block(res_test, label=f"round {r}, test split: {config.attack.attack}",
                                          class_names=bp.class_names))
        if log is not None:
            log(f"round {r}: train SAN {rec['train']['san']}, test SAN {rec['test']['san']}, "
                f"test score {bp.task.score(rec['test']):.3f}")
        if r == config.rounds:
            break
        hu_train = data.hu[train_idx].astype(np.float32)
        if config.mode == "uniform":
            g = np.random.default_rng([config.seed, r, 23])
            noisy = hu_train + g.uniform(-config.uniform_amplitude, config.uniform_amplitude, hu_train.shape).astype(np.float32)
            new_x, keep = registry.preprocess(noisy, bp.hu_window), np.ones(len(train_idx), bool)
        else:
            new_x = res_train.adv_inputs.astype(np.float32)
            keep = res_train.deployed_flips.any(1) if config.mode == "adaptive" else np.ones(len(train_idx), bool)
        pool_x.append(new_x[keep])
        for k in data.targets:
            pool_t[k].append(data.targets[k][train_idx][keep])
        pool_s.append(data.strata[train_idx][keep])
        rec["added"] = int(keep.sum())
        x = np.concatenate([data.x[split.train]] + pool_x)
        targets = {k: np.concatenate([data.targets[k][split.train]] + pool_t[k]) for k in data.targets}
        strata = np.concatenate([data.strata[split.train]] + pool_s)
        net = finetune(bp, net, x, targets, strata, data, split.val, epochs=config.epochs, lr=config.lr,
                       batch_size=built.recipe.batch_size, seed=config.seed + r)
        onnx_path, rec["next_parity_max_abs_diff"] = export_round(
            bp, net, out / f"{config.model}-round{r + 1}", recipe_hash=built.recipe_hash, seed=config.seed + r, data=data,
            test=split.test)
    if config.audit:
        audit = audit_rounds(config, bp, data, test_idx, onnx_paths, attack_blocks, out / "audit", progress)
        for rec, model in zip(rounds, audit["models"]):
            rec["audit"] = audit_rates(model)  # per dose, with the audit report's intervals
    report = {"schema": SCHEMA, "model": config.model, "variant": built.recipe.variant, "mode": config.mode,
              "config": config.to_dict(), "base_build": paths.show(built.out), "rounds": rounds,
              "audit_report": "audit/report.html" if config.audit else None}
    write_json(out / "retrain.json", report)
    write_text(out / "retrain.html", render_retrain_html(report))
    return report


def audit_rounds(config: RetrainConfig, bp, data, test_idx: np.ndarray, onnx_paths: list[Path],
                 attack_blocks: list[dict[str, Any]], out: Path, progress: bool | None) -> dict[str, Any]:
    """One noise audit of every round's ONNX artifact on the test split, all on the same keyed draws (paired), with
    each round's attack on the test split in the same report."""
    models = [open_path(p, f"round{r}") for r, p in enumerate(onnx_paths)]
    labels = data.targets.get("label")
    source = ArraySource(data.hu[test_idx].astype(np.float32), tuple(bp.spacing),
                         None if labels is None else np.asarray(labels)[test_idx].astype(np.int64),
                         ids=[f"test:{i}" for i in test_idx], name=f"{config.model} test split (n={len(test_idx)})",
                         class_names=tuple(bp.class_names))
    stats = run_campaign(models, source, config.noise, out, RunOptions(progress=progress))
    return write_reports(out, models, source, config.noise, stats, attacks=attack_blocks,
                         paths=path_style(out, root=out.parent, cache=config.cache_dir))


def _san(result) -> dict[str, Any]:
    """The attack's SAN and pooled SAR on one split, with the campaign report's intervals."""
    torch_rate, deployed_rate = result.success_rates()  # not summary(): its OOD bootstraps are not wanted here
    return {**attack_rates(result.deployed_flips), "torch_success_rate": torch_rate,
            "deployed_success_rate": deployed_rate}


def retrain_from_config(config: RetrainConfig, out: str | Path, *, progress: bool | None = None) -> dict[str, Any]:
    return retrain(config, out, progress=progress, log=lambda line: print(line, file=sys.stderr))
