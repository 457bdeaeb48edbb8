"""Retraining on what the attacks find: adaptive training (study 1, Algorithm 2) and adversarial training (study 4).

Each round: attack the training samples through the deployed ONNX artifact
(``audit.attacks``; the deployed model decides), add perturbed samples with
their original labels, fine-tune (``epochs``, Adam, best epoch on the
validation split kept), re-export ONNX with the parity check, and re-run the
same attack on the training and test samples. Round 0 is the model as built.
Every round records AUC (or the task's score) and SAN on train and test, so
robustness and accuracy sit side by side.

Then every round's ONNX artifact is audited against NPS noise on the test
split in one campaign (``audit/report.*``): the rounds are models of the same
campaign, so they see the same keyed noise draws and their SAR per dose is a
paired comparison; the report also holds each round's attack on the test
split. Decision: one campaign after the last round rather than one per round,
because identical draws make the rounds directly comparable.

Modes: ``adaptive`` adds the successful perturbations only (Algorithm 2);
``pgd`` adds every PGD sample (clean + adversarial, study 4); ``uniform`` adds
uniform-noise samples U(-a, a) HU (clean + noise, study 4's baseline).
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from audit.errors import ConfigError, InputError
from audit.noise_spec import NoiseSpec
from models import export, registry, training

build_mod = importlib.import_module("models.build")  # the module; ``models.build`` the attribute is the function

MODES = ("adaptive", "pgd", "uniform")
SCHEMA = "audit-retrain/1"


@dataclass(frozen=True)
class RetrainConfig:
    model: str = "nodule3d"
    variant: str | None = None
    quick: bool = True
    mode: str = "adaptive"
    rounds: int = 2
    epochs: int = 10
    lr: float = 5e-4
    train_samples: int = 64
    test_samples: int = 64
    seed: int = 0
    uniform_amplitude: float = 50.0
    attack: Mapping[str, Any] = field(default_factory=lambda: {"name": "pgd", "eps": 0.02, "steps": 10})
    cache_dir: str | None = None
    noise: NoiseSpec = field(default_factory=lambda: NoiseSpec(draws=20))
    audit: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"retrain.mode: expected one of {MODES}, got {self.mode!r}")
        for key, low in (("rounds", 1), ("epochs", 1), ("train_samples", 2), ("test_samples", 2)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"retrain.{key}: expected an integer >= {low}, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"retrain.lr: expected a number > 0, got {self.lr!r}")
        if not (isinstance(self.uniform_amplitude, (int, float)) and self.uniform_amplitude > 0):
            raise ConfigError(f"retrain.uniform_amplitude: expected a number > 0 (HU), got {self.uniform_amplitude!r}")
        if "name" not in self.attack:
            raise ConfigError("attack.name: missing")
        if not isinstance(self.audit, bool):
            raise ConfigError(f"retrain.audit: expected true or false, got {self.audit!r}")
        if not isinstance(self.noise, NoiseSpec):
            raise ConfigError(f"noise: expected a noise table, got {self.noise!r}")


def _audited(path: Path, name: str | None = None):
    from audit.campaign import AuditedModel
    from audit.engines import load_engine
    from audit.heads import head_from, preprocess_from

    engine = load_engine(path)
    return AuditedModel(name or path.stem, engine, head_from(engine.metadata), preprocess_from(engine.metadata))


def _attack_spec(config: RetrainConfig):
    """The ``[attack]`` table read exactly as ``audit attack`` reads it (``audit.attacks.config.AttackSpec``)."""
    from audit.attacks.config import parse_attack_section

    return parse_attack_section(config.attack, Path("."), None)


def _attack(config: RetrainConfig, net: torch.nn.Module, onnx_path: Path, hu: np.ndarray, ids: list[str], seed: int):
    """Run the configured attack on ``hu`` against the ONNX artifact (twin = ``net``), seeded by the round's seed
    plus ``[attack] seed``; the result keeps the attacked model inputs (what adversarial training adds)."""
    from audit.attacks import Target, build_attack, run_attack

    spec = _attack_spec(config)
    model = _audited(onnx_path)
    target = Target.from_model(model, copy.deepcopy(net).eval(), parity_hu=hu[:4])
    attack = build_attack(spec.attack, target, **spec.params)
    return run_attack(attack, model, hu, seed=spec.seed + seed, batch_size=spec.batch_size, ids=ids, keep=0, progress=False,
                      return_inputs=True)


def _metrics(bp, net, data, idx) -> dict[str, Any]:
    m = training.evaluate(bp, net, data, idx)
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def finetune(bp, net: torch.nn.Module, x: np.ndarray, targets: dict[str, np.ndarray], strata: np.ndarray, data,
             val: np.ndarray, *, epochs: int, lr: float, batch_size: int, seed: int) -> torch.nn.Module:
    """Fine-tune ``net`` on (x, targets) for ``epochs`` with class-balanced batches; keep the best validation epoch
    of the fine-tuning (never the start)."""
    with training.deterministic(seed):
        for p in net.parameters():
            p.requires_grad_(True)
        net = net.to(memory_format=torch.contiguous_format)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        rng = np.random.default_rng([seed, 13])
        # best among the fine-tuned epochs only: seeding it with the start would keep the old weights whenever
        # validation does not improve, and the round would change nothing
        best, best_state = -np.inf, None
        for epoch in range(epochs):
            net.train()
            order = training.balanced_order(strata, rng)
            for i in range(0, order.size, batch_size):
                b = order[i : i + batch_size]
                t = {k: torch.from_numpy(np.ascontiguousarray(v[b])) for k, v in targets.items()}
                loss = bp.task.loss(net, torch.from_numpy(x[b]), t, epoch)
                opt.zero_grad()
                loss.backward()
                opt.step()
            score = bp.task.score(_metrics(bp, net, data, val))
            if score > best:
                best, best_state = score, copy.deepcopy(net.state_dict())
        net.load_state_dict(best_state)
    return net.eval()


def retrain(config: RetrainConfig, out: str | Path, *, progress: bool | None = None, log=None) -> dict[str, Any]:
    """Run ``config.rounds`` rounds of retraining; writes ``retrain.json``/``.html``, the round ONNX files and (with
    ``config.audit``) ``audit/report.*``: every round's artifact audited on the same noise draws."""
    from audit.attacks.report import attack_block

    out = build_mod.prepare_out(out)
    if config.audit and (out / "audit" / "campaign.json").exists():
        raise InputError(f"{out / 'audit'}: holds the audit of an earlier retraining; choose another --out")
    built = build_mod.cached_build(config.model, config.variant, quick=config.quick, cache_dir=config.cache_dir,
                                   progress=progress)
    art = built.artifacts[0]
    bp = registry.get(config.model).blueprint(built.recipe.variant)
    data = bp.make_data(built.recipe.samples, built.recipe.data_seed)
    split = training.make_splits(data.strata, built.recipe)[0]
    rng = np.random.default_rng([config.seed, 17])
    train_idx = np.sort(rng.choice(split.train, min(config.train_samples, split.train.size), replace=False))
    test_idx = np.sort(rng.choice(split.test, min(config.test_samples, split.test.size), replace=False))
    net = build_mod.load_checkpoint(config.model, built.recipe.variant, art.checkpoint)
    onnx_path = art.onnx
    pool_x, pool_t, pool_s = [], {k: [] for k in data.targets}, []
    rounds, onnx_paths, attack_blocks = [], [], []
    for r in range(config.rounds + 1):
        res_train = _attack(config, net, onnx_path, data.hu[train_idx].astype(np.float32),
                            [f"train:{i}" for i in train_idx], config.seed + 7 * r)
        res_test = _attack(config, net, onnx_path, data.hu[test_idx].astype(np.float32),
                           [f"test:{i}" for i in test_idx], config.seed + 7 * r + 1)
        rec = {"round": r, "onnx": str(onnx_path), "train": {**_metrics(bp, net, data, split.train),
               **_san(res_train)}, "test": {**_metrics(bp, net, data, split.test), **_san(res_test)}}
        rounds.append(rec)
        onnx_paths.append(onnx_path)
        attack_blocks.append(attack_block(res_test, label=f"round {r}, test split: {config.attack['name']}",
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
        onnx_path = out / f"{config.model}-round{r + 1}.onnx"
        md = export.metadata_for(bp, recipe_hash=built.recipe_hash, weights=training.weights_sha256(net),
                                 seed=config.seed + r, fold=0, repeat=0, test_metrics=_metrics(bp, net, data, split.test))
        rec_parity = export.export_onnx(net, onnx_path, input_shape=bp.input_shape, output_names=bp.output_names,
                                        metadata=md, parity_inputs=data.x[split.test[: export.PARITY_SAMPLES]])
        torch.save(net.state_dict(), out / f"{config.model}-round{r + 1}.pt")
        rec["next_parity_max_abs_diff"] = rec_parity
    if config.audit:
        audit = audit_rounds(config, bp, data, test_idx, onnx_paths, attack_blocks, out / "audit", progress)
        for rec, model in zip(rounds, audit["models"]):
            rec["audit"] = [{"level": b["level"], "SAN_fraction": b["SAN_fraction"], "SAR_overall": b["SAR_overall"]}
                            for b in model["levels"]]
    report = {"schema": SCHEMA, "model": config.model, "variant": built.recipe.variant, "mode": config.mode,
              "config": {k: (dict(v) if isinstance(v, Mapping) else v.to_dict() if isinstance(v, NoiseSpec) else v)
                         for k, v in config.__dict__.items()},
              "base_build": str(built.out), "rounds": rounds,
              "audit_report": "audit/report.html" if config.audit else None}
    from audit.atomic import atomic_path

    with atomic_path(out / "retrain.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(out / "retrain.html") as tmp:
        tmp.write_text(render_retrain_html(report), encoding="utf-8")
    return report


def audit_rounds(config: RetrainConfig, bp, data, test_idx: np.ndarray, onnx_paths: list[Path],
                 attack_blocks: list[dict[str, Any]], out: Path, progress: bool | None) -> dict[str, Any]:
    """One noise audit of every round's ONNX artifact on the test split, all on the same keyed draws (paired), with
    each round's attack on the test split in the same report."""
    from audit.campaign import RunOptions, run_campaign
    from audit.data import ArraySource
    from audit.runner import write_reports

    models = [_audited(p, f"round{r}") for r, p in enumerate(onnx_paths)]
    labels = data.targets.get("label")
    source = ArraySource(data.hu[test_idx].astype(np.float32), tuple(bp.spacing),
                         None if labels is None else np.asarray(labels)[test_idx].astype(np.int64),
                         ids=[f"test:{i}" for i in test_idx], name=f"{config.model} test split (n={len(test_idx)})",
                         class_names=tuple(bp.class_names))
    stats = run_campaign(models, source, config.noise, out, RunOptions(progress=progress))
    return write_reports(out, models, source, config.noise, stats, attacks=attack_blocks)


def _san(result) -> dict[str, Any]:
    s = result.summary()
    return {"san": s["san"], "n": s["n"], "san_fraction": s["san_fraction"],
            "torch_success_rate": s["torch_success_rate"], "deployed_success_rate": s["deployed_success_rate"]}


def render_retrain_html(report: dict[str, Any]) -> str:
    """Robustness (attack SAN, noise SAR per dose) and accuracy per round, side by side."""
    import html

    keys = [k for k in ("auc", "accuracy", "macro_f1", "mae", "dice") if k in report["rounds"][0]["train"]]
    levels = [b["level"] for b in report["rounds"][0].get("audit", [])]
    head = (["round", "added"] + [f"train {k}" for k in keys] + ["train SAN (attack)"] + [f"test {k}" for k in keys]
            + ["test SAN (attack)"] + [f"test SAR @ {lv:g} mAs" for lv in levels])
    rows = []
    for r in report["rounds"]:
        cells = [r["round"], r.get("added", "")] + [f"{r['train'][k]:.3f}" for k in keys] + \
                [f"{r['train']['san']}/{r['train']['n']}"] + [f"{r['test'][k]:.3f}" for k in keys] + \
                [f"{r['test']['san']}/{r['test']['n']}"] + [f"{b['SAR_overall']:.4f}" for b in r.get("audit", [])]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    link = (f"<p>Noise audit of every round on the same draws, with each round's attack: "
            f"<a href='{html.escape(report['audit_report'])}'>{html.escape(report['audit_report'])}</a></p>"
            if report.get("audit_report") else "")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>retrain</title></head><body>"
            f"<h1>Retraining ({html.escape(report['mode'])}) of {html.escape(report['model'])}</h1><table border=1>"
            "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + f"</table>{link}</body></html>")


RETRAIN_KEYS = ("mode", "rounds", "epochs", "lr", "train_samples", "test_samples", "seed", "uniform_amplitude", "audit")


def load_retrain_config(path: str | Path) -> RetrainConfig:
    """``[model]`` name, variant, quick, cache_dir; ``[retrain]`` RETRAIN_KEYS; ``[attack]`` as ``audit attack``'s;
    ``[noise]`` as ``audit run``'s (the per-round audit; default: the standard preset at 5 doses, 20 draws)."""
    from audit.config import read_toml
    from audit.noise_spec import noise_spec_from

    path = Path(path)
    raw = read_toml(path)
    for key in raw:
        if key not in ("model", "retrain", "attack", "noise"):
            raise ConfigError(f"{path}: {key}: unknown section; allowed: model, retrain, attack, noise")
    model, rt, attack = (dict(raw.get(k, {})) for k in ("model", "retrain", "attack"))
    for key in model:
        if key not in ("name", "variant", "quick", "cache_dir"):
            raise ConfigError(f"{path}: model.{key}: unknown key; allowed: name, variant, quick, cache_dir")
    for key in rt:
        if key not in RETRAIN_KEYS:
            raise ConfigError(f"{path}: retrain.{key}: unknown key; allowed: {', '.join(RETRAIN_KEYS)}")
    registry.get(model.get("name", "nodule3d"))
    kw: dict[str, Any] = {"model": model.get("name", "nodule3d"), "variant": model.get("variant"),
                          "quick": bool(model.get("quick", True)), "cache_dir": model.get("cache_dir"), **rt}
    try:
        if attack:  # the same keys and checks as audit attack's [attack] (seed, batch_size, the attack's parameters)
            from audit.attacks.config import parse_attack_section

            spec = parse_attack_section(attack, path.resolve().parent, None)
            kw["attack"] = {**attack, **{k: spec.params[k] for k in ("generator", "ood") if k in spec.params}}
        if "noise" in raw:
            kw["noise"] = noise_spec_from(dict(raw["noise"]), path.resolve().parent)
        return RetrainConfig(**kw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def retrain_from_config(config: RetrainConfig, out: str | Path, *, progress: bool | None = None) -> dict[str, Any]:
    return retrain(config, out, progress=progress, log=lambda line: print(line, file=sys.stderr))
