"""The audit configuration: one TOML file, validated into a frozen object; unknown keys are errors.

Sections (all documented in README.md):
``[[model]]`` (or ``[model]``): path, name, engine, threads, providers, precision, max_batch;
``[head]``, ``[preprocess]``: overrides of what the ONNX metadata says;
``[data]``: manifest (CSV) or phantom (``nodules`` | ``bodysite``) with n and seed; spacing; class_names;
``[noise]``: see ``audit.noise_spec``; ``[run]``: batch_size, shard_samples, noise_workers, prefetch;
``[report]``: worst (flipped cases shown); ``[pacs]``: a DICOMweb server (see ``audit.pacs.config``);
``[attack]``: gradient attacks on every model, as in ``audit attack`` (see ``audit.attacks.config``).
Relative paths are relative to the config file.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from audit.campaign import RunOptions
from audit.errors import ConfigError, InputError
from audit.noise_spec import NoiseSpec, noise_spec_from

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("model", "head", "preprocess", "data", "noise", "run", "report", "scan_arm", "pacs", "attack")
SCAN_ARM_KEYS = ("source", "mas", "scans", "draws", "seed", "patch_mm", "overlap")
MODEL_KEYS = ("path", "name", "engine", "threads", "providers", "optimization", "precision", "max_batch")
DATA_KEYS = ("manifest", "phantom", "n", "seed", "spacing", "class_names", "cube", "target_spacing")
RUN_KEYS = ("batch_size", "shard_samples", "noise_workers", "prefetch")
PHANTOMS = ("nodules", "bodysite")


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    name: str
    engine: str = "onnxruntime"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditConfig:
    models: tuple[ModelEntry, ...]
    head: Mapping[str, Any]
    preprocess: Mapping[str, Any]
    data: Mapping[str, Any]
    noise: NoiseSpec
    run: RunOptions
    worst: int = 6
    base: Path = Path(".")
    dicom_cases: bool = False
    scan_arm: Mapping[str, Any] | None = None
    pacs: Any = None  # audit.pacs.PacsServer: manifest rows dicomweb:<UID>, and push of flipped cases
    attack: Any = None  # audit.attacks.config.AttackSpec: gradient attacks on the same data, in the same report
    path: Path | None = None  # the config file, named in errors found after parsing


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}]: expected a table")
    return dict(value)


def _check_keys(section: str, values: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in values:
        if key not in allowed:
            raise ConfigError(f"{section}.{key}: unknown key; allowed: {', '.join(allowed)}")


def parse_config(raw: Mapping[str, Any], base: Path) -> AuditConfig:
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"{key}: unknown section; allowed: {', '.join(SECTIONS)}")
    # Unknown keys anywhere come first: a typo is the likeliest mistake.
    for name, allowed in (("data", DATA_KEYS), ("run", RUN_KEYS), ("report", ("worst", "dicom")), ("scan_arm", SCAN_ARM_KEYS)):
        _check_keys(name, _section(raw, name), allowed)
    pacs = None
    if "pacs" in raw:
        from audit.pacs.config import pacs_server_from

        pacs = pacs_server_from(_section(raw, "pacs"), base)
    noise = noise_spec_from(_section(raw, "noise"), base)
    models_raw = raw.get("model")
    if models_raw is None:
        raise ConfigError("model: missing; add a [model] table with path = \"model.onnx\"")
    models_raw = [models_raw] if isinstance(models_raw, dict) else models_raw
    models = []
    for i, m in enumerate(models_raw):
        if not isinstance(m, dict):
            raise ConfigError(f"model[{i}]: expected a table")
        _check_keys("model", m, MODEL_KEYS)
        if "path" not in m:
            raise ConfigError(f"model[{i}].path: missing")
        path = Path(m["path"])
        path = path if path.is_absolute() else (base / path)
        engine = m.get("engine", "onnxruntime")
        if engine not in ("onnxruntime", "tensorrt"):
            raise ConfigError(f"model.engine: expected 'onnxruntime' or 'tensorrt', got {engine!r}")
        options = {k: m[k] for k in ("threads", "providers", "optimization") if k in m} if engine == "onnxruntime" else \
                  {k: m[k] for k in ("precision", "max_batch") if k in m}
        models.append(ModelEntry(path, str(m.get("name", path.stem)), engine, options))
    data = _section(raw, "data")
    if ("manifest" in data) == ("phantom" in data):
        raise ConfigError("data: set exactly one of data.manifest (CSV) or data.phantom")
    if "phantom" in data and data["phantom"] not in PHANTOMS:
        raise ConfigError(f"data.phantom: expected one of {PHANTOMS}, got {data['phantom']!r}")
    if "manifest" in data:
        p = Path(data["manifest"])
        data["manifest"] = p if p.is_absolute() else base / p
    run, report = _section(raw, "run"), _section(raw, "report")
    arm = _section(raw, "scan_arm") if "scan_arm" in raw else None
    if arm is not None:
        if arm.get("source", "phantom_scanner") != "phantom_scanner":
            raise ConfigError(f"scan_arm.source: expected 'phantom_scanner' (DICOM series come later), got {arm['source']!r}")
        if not isinstance(arm.get("mas"), (int, float)) or arm["mas"] <= 0:
            raise ConfigError(f"scan_arm.mas: expected a positive dose in mAs, got {arm.get('mas')!r}")
    attack = None
    if "attack" in raw:
        from audit.attacks.config import parse_attack_section

        attack = parse_attack_section(_section(raw, "attack"), base, noise)
    return AuditConfig(tuple(models), _section(raw, "head"), _section(raw, "preprocess"), data, noise, RunOptions(**run),
                       int(report.get("worst", 6)), base, scan_arm=arm, pacs=pacs,
                       dicom_cases=bool(report.get("dicom", False)) or bool(pacs is not None and pacs.push), attack=attack)


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A TOML file as a dict; unreadable or invalid files raise errors naming the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(path: str | Path) -> AuditConfig:
    path = Path(path)
    raw = read_toml(path)
    try:
        config = parse_config(raw, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return dataclasses.replace(config, path=path)
