"""``audit attack CONFIG.toml``: one validated, frozen config; unknown keys are errors.

Sections:
``[model]``: path (ONNX, required), name, threads, optimization; checkpoint (a
torch state dict, loaded weights-only) with net (a ``models`` registry name)
and variant, to attack the user's torch module instead of an onnx2torch twin.
``[head]``, ``[preprocess]``: overrides of the ONNX metadata, as in ``audit run``.
``[data]``: as in ``audit run`` (manifest or phantom, n, seed, spacing, class_names).
``[attack]``: name (one of ``audit.attacks.ATTACKS``), seed, batch_size, keep
(flipped examples shown), explain (Grad-CAM + first-layer maps), samples
(attack only the first n; default all), and the
attack's own parameters (e.g. eps, steps, norm for pgd; a list of eps runs one
attack per value).
``[noise]``: for nps_ascent, the target NPS as in ``audit run`` (kind nps,
levels in mAs: one attack per level); draws is ignored (restarts is K).
Relative paths are relative to the config file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from audit.config import DATA_KEYS, PHANTOMS, read_toml
from audit.errors import ConfigError
from audit.noise_spec import NoiseSpec, noise_spec_from

SECTIONS = ("model", "head", "preprocess", "data", "attack", "noise")
MODEL_KEYS = ("path", "name", "threads", "optimization", "checkpoint", "net", "variant")
RUN_KEYS = ("name", "seed", "batch_size", "keep", "explain", "samples")


@dataclass(frozen=True)
class AttackSpec:
    """What to run, from an ``[attack]`` table (shared by ``audit attack``, ``audit run`` and ``audit retrain``).

    ``attack``: a name of ``ATTACKS``; ``params``: its own parameters (a list of
    eps runs one attack per value); ``samples``: attack only the first n
    samples (None: all); ``noise``: the target NPS of ``nps_ascent``.
    """

    attack: str
    params: Mapping[str, Any]
    seed: int = 0
    batch_size: int = 16
    keep: int = 4
    explain: bool = True
    samples: int | None = None
    noise: NoiseSpec | None = None


@dataclass(frozen=True)
class AttackConfig:
    model_path: Path
    model_name: str
    engine_options: Mapping[str, Any]
    checkpoint: Path | None
    net: str | None
    variant: str | None
    head: Mapping[str, Any]
    preprocess: Mapping[str, Any]
    data: Mapping[str, Any]
    spec: AttackSpec
    base: Path = field(default=Path("."))


def _table(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}]: expected a table")
    return dict(value)


def _int(section: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{section}.{key}: expected an integer >= {low}, got {value!r}")
    return value


def _path(base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a path string, got {value!r}")
    p = Path(value)
    return p if p.is_absolute() else base / p


def parse_attack_config(raw: Mapping[str, Any], base: Path) -> AttackConfig:
    from audit.attacks import ATTACKS

    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"{key}: unknown section; allowed: {', '.join(SECTIONS)}")
    model, data, attack = _table(raw, "model"), _table(raw, "data"), _table(raw, "attack")
    for key in model:
        if key not in MODEL_KEYS:
            raise ConfigError(f"model.{key}: unknown key; allowed: {', '.join(MODEL_KEYS)}")
    for key in data:
        if key not in DATA_KEYS:
            raise ConfigError(f"data.{key}: unknown key; allowed: {', '.join(DATA_KEYS)}")
    if "path" not in model:
        raise ConfigError("model.path: missing; set it to the deployed ONNX file")
    path = _path(base, model["path"], "model.path")
    checkpoint = _path(base, model["checkpoint"], "model.checkpoint") if "checkpoint" in model else None
    if checkpoint is not None and "net" not in model:
        raise ConfigError("model.net: missing; a checkpoint needs the registry name of its net (e.g. 'nodule3d')")
    if ("manifest" in data) == ("phantom" in data):
        raise ConfigError("data: set exactly one of data.manifest (CSV) or data.phantom")
    if "phantom" in data and data["phantom"] not in PHANTOMS:
        raise ConfigError(f"data.phantom: expected one of {PHANTOMS}, got {data['phantom']!r}")
    if "manifest" in data:
        data["manifest"] = _path(base, data["manifest"], "data.manifest")
    noise = noise_spec_from(_table(raw, "noise"), base) if "noise" in raw else None
    spec = parse_attack_section(attack, base, noise)
    engine_options = {k: model[k] for k in ("threads", "optimization") if k in model}
    return AttackConfig(path, str(model.get("name", path.stem)), engine_options, checkpoint, model.get("net"),
                        model.get("variant"), _table(raw, "head"), _table(raw, "preprocess"), data, spec, base)


def parse_attack_section(table: Mapping[str, Any], base: Path, noise: NoiseSpec | None) -> AttackSpec:
    """An ``[attack]`` table (``RUN_KEYS`` plus the attack's own parameters) -> ``AttackSpec``; ``noise`` is the
    config's ``[noise]`` (needed by, and only used by, ``nps_ascent``)."""
    from audit.attacks import ATTACKS

    attack = dict(table)
    name = attack.pop("name", None)
    if name is None:
        raise ConfigError(f"attack.name: missing; expected one of {sorted(ATTACKS)}")
    if name not in ATTACKS:
        raise ConfigError(f"attack.name: unknown attack {name!r}; expected one of {sorted(ATTACKS)}")
    seed = _int("attack", "seed", attack.pop("seed", 0), 0)
    batch = _int("attack", "batch_size", attack.pop("batch_size", 16), 1)
    keep = _int("attack", "keep", attack.pop("keep", 4), 0)
    samples = attack.pop("samples", None)
    if samples is not None:
        samples = _int("attack", "samples", samples, 1)
    explain = attack.pop("explain", True)
    if not isinstance(explain, bool):
        raise ConfigError(f"attack.explain: expected true or false, got {explain!r}")
    for key in ("generator", "ood"):
        if key in attack:
            attack[key] = str(_path(base, attack[key], f"attack.{key}"))
    if name == "nps_ascent":
        noise = NoiseSpec() if noise is None else noise
        if noise.kind != "nps":
            raise ConfigError(f"noise.kind: attacks use an NPS target; expected 'nps', got {noise.kind!r}")
    else:
        noise = None
    return AttackSpec(name, attack, seed, batch, keep, explain, samples, noise)


def load_attack_config(path: str | Path) -> AttackConfig:
    path = Path(path)
    raw = read_toml(path)
    try:
        return parse_attack_config(raw, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
