"""Every configuration file, parsed one way: TOML -> typed, frozen sections, validated before anything loads.

``load_config`` (``audit run``, ``audit fast-gate``), ``load_attack_config``
(``audit attack``) and ``load_retrain_config`` (``audit retrain``) share the
section parsers below and the validators of ``audit.toml``; unknown sections
and keys are errors, and so is every wrong type or range, named by its key.
Each section becomes the object of the module that owns the concept:
``[[model]]`` -> ``audit.artifact.ModelEntry``, ``[data]`` ->
``audit.data.DataSection``, ``[noise]`` -> ``audit.campaign.NoiseSpec``,
``[run]`` -> ``audit.campaign.RunOptions``, ``[pacs]`` ->
``audit.pacs.PacsServer``, ``[attack]`` -> ``AttackSpec`` (attack names and
parameters checked against ``audit.attacks``). ``[head]`` and ``[preprocess]``
become read-only mappings of checked overrides of the artifact's metadata.
The policy of ``audit gate`` is parsed in ``audit.gate`` with the same
validators, so the gate never imports the campaign or the engines.
Relative paths are relative to the config file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from audit.artifact import ACTIVATIONS, BLENDS, DETECTION_FORMATS, TASKS, ModelEntry
from audit.attacks import ATTACKS, check_attack_params
from audit.campaign.noise import BANK_FIELDS, KINDS, MODES, NoiseSpec, read_kernel_table, read_nps_table
from audit.campaign.reduction import SCAN_NOISE, SPATIAL
from audit.campaign.run import RunOptions, thread_layout
from audit.data import PHANTOMS, DataSection
from audit.engines import BACKENDS, backend
from audit.errors import ConfigError
from audit.pacs import PacsServer, pacs_section
from audit.toml import Table, check_sections, read_toml
from audit.track import TrackSpec, track_section
from models.registry import REGISTRY

SECTIONS = ("model", "head", "preprocess", "data", "noise", "run", "report", "scan_arm", "pacs", "attack", "track")
ATTACK_SECTIONS = ("model", "head", "preprocess", "data", "attack", "noise")
RETRAIN_SECTIONS = ("model", "retrain", "attack", "noise")
#: Trainers (``Blueprint.trainer``) whose models ``audit retrain`` refuses, with the reason: its loop attacks and
#: fine-tunes one net on per-image labels; a two-stage detector trains its stages separately on lesion annotations
#: (``models.training.train_detector``).
RETRAIN_REFUSED = {"detector": "a two-stage detector: its stages train separately on lesion annotations, and the "
                               "attacks judge per-image decisions, not lesions"}
NOISE_KEYS = ("kind", "levels", "draws", "seed", "preset", "table", "sigma_ref", "mas_ref", "electronic_fraction",
              "cutoff", "z_fwhm_mm", "method", "mode", "fractions", "acquired_mas", "scan_noise", "phantom_series",
              "phantom_mas", "reference_diameter_mm", "strict_kernel", "roi_mm", "spatial", "ctdivol_mgy",
              "acquired_ctdivol_mgy", "kernel_table", "bank")
ATTACK_RUN_KEYS = ("name", "seed", "batch_size", "keep", "explain", "samples")
RETRAIN_MODES = ("adaptive", "pgd", "uniform")
MAX_THREADS = 4096  # engine threads: more is a typo, and the engines take a C int


@dataclass(frozen=True)
class ScanArm:
    """``[scan_arm]``: repeated scans of the phantom scanner at ``mas`` against simulated noise (study 2)."""

    mas: float
    scans: int = 20
    draws: int = 100
    seed: int = 0
    patch_mm: float = 6.8
    overlap: float = 0.3
    source: str = "phantom_scanner"


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
class AuditConfig:
    models: tuple[ModelEntry, ...]
    head: Mapping[str, Any]
    preprocess: Mapping[str, Any]
    data: DataSection
    noise: NoiseSpec
    run: RunOptions
    worst: int = 6
    base: Path = Path(".")
    dicom_cases: bool = False
    scan_arm: ScanArm | None = None
    pacs: PacsServer | None = None  # manifest rows pacs:<UID> (DICOMweb or DIMSE), and push of flipped cases
    attack: AttackSpec | None = None  # gradient attacks on the same data, in the same report
    path: Path | None = None  # the config file, named in errors found after parsing
    track: TrackSpec | None = None  # [track]: log the audit to MLflow


@dataclass(frozen=True)
class AttackConfig:
    """``audit attack``: one ONNX artifact (or a torch checkpoint as the twin), its data, one ``[attack]``."""

    model: ModelEntry
    checkpoint: Path | None
    net: str | None
    variant: str | None
    head: Mapping[str, Any]
    preprocess: Mapping[str, Any]
    data: DataSection
    spec: AttackSpec
    base: Path = field(default=Path("."))
    pacs: PacsServer | None = None


@dataclass(frozen=True)
class RetrainConfig:
    """``audit retrain``: the reference model to retrain, how, with which attack, and the per-round audit's noise."""

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
    attack: AttackSpec = field(default_factory=lambda: AttackSpec("pgd", MappingProxyType({"eps": 0.02, "steps": 10})))
    cache_dir: str | None = None
    noise: NoiseSpec = field(default_factory=lambda: NoiseSpec(draws=20))
    audit: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["attack"] = {"name": self.attack.attack, **dict(self.attack.params), "seed": self.attack.seed}
        out["noise"] = self.noise.to_dict()
        return out


# ---------------------------------------------------------------- sections


def model_entries(raw: Any, base: Path) -> tuple[ModelEntry, ...]:
    """``[[model]]`` (or one ``[model]``): path, name, engine and the engine's own options."""
    if raw is None:
        raise ConfigError("model: missing; add a [model] table with path = \"model.onnx\"")
    tables = [raw] if isinstance(raw, dict) else raw
    if not isinstance(tables, list) or not tables:
        raise ConfigError("model: expected a [model] table or [[model]] tables")
    entries = []
    for i, m in enumerate(tables):
        t = Table(m, "model" if len(tables) == 1 else f"model[{i}]", base)
        engine = t.str("engine", "onnxruntime", choices=tuple(BACKENDS))
        if engine == "remote":  # a model on a v2 server: url + model_name instead of a file
            for key in ("url", "model_name"):
                if key not in t:
                    raise ConfigError(f"{t.key(key)}: missing; engine 'remote' needs url and model_name")
            if "path" in t:
                raise ConfigError(f"{t.key('path')}: engine 'remote' takes no file; it reads url and model_name")
            path = Path(t.str("model_name"))
        else:
            path = t.path("path")
        name = t.str("name", path.stem if engine != "remote" else str(path))
        options: dict[str, Any] = {}
        for key in backend(engine).OPTIONS:
            if key in ("threads", "streams", "micro_batch", "max_batch", "opt_batch"):  # C ints in the engines
                value = (t.int(key, None, low=0, high=MAX_THREADS) if key == "threads"
                         else t.int(key, None, low=1, high=MAX_THREADS) if key == "streams"
                         else t.int(key, None, low=0, high=2**31 - 1) if key == "micro_batch"
                         else t.int(key, None, low=1, high=2**31 - 1))
            elif key == "providers":
                value = t.strings(key, None)
            elif key == "workspace_gib":
                value = t.float(key, None, low=0, low_open=True)
            elif key in ("concurrency", "retries"):  # remote: requests in flight, retries of a failed request
                value = t.int(key, None, low=1 if key == "concurrency" else 0, high=256)
            elif key == "timeout_s":
                value = t.float(key, None, low=0, low_open=True)
            elif key == "binary":
                value = t.bool(key, None)
            else:
                value = t.str(key, None)
            if value is not None:
                options[key] = list(value) if key == "providers" else value
        all_keys = {"path", "engine", "name"} | {k for cls in BACKENDS.values() for k in cls.OPTIONS}
        unknown = [k for k in t.raw if k not in ("path", "engine", "name") and k not in backend(engine).OPTIONS]
        if unknown:
            if unknown[0] in all_keys:
                raise ConfigError(f"{t.key(unknown[0])}: not an option of engine {engine!r}; its options: "
                                  f"{', '.join(backend(engine).OPTIONS) or 'none'}")
            raise ConfigError(f"{t.key(unknown[0])}: unknown key; allowed: {', '.join(sorted(all_keys))}")
        entries.append(ModelEntry(path, name, engine, MappingProxyType(options)))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"model.name: names must be unique, got {names}")
    return tuple(entries)


def _voxels(t: Table, key: str) -> tuple[int, int, int]:
    """An integer >= 0 (voxels, every axis) or three of them (z, y, x)."""
    v = t.raw_value(key)
    v = [v] * 3 if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(v, list) or len(v) != 3 or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in v):
        raise ConfigError(f"{t.key(key)}: expected an integer >= 0 (voxels) or a list of three (z, y, x), got {v!r}")
    return tuple(v)  # type: ignore[return-value]


def head_section(t: Table) -> Mapping[str, Any]:
    """``[head]``: checked overrides of the artifact's head metadata (see ``audit.artifact.head_from``)."""
    out: dict[str, Any] = {}
    getters = {
        "task": lambda k: t.str(k, choices=TASKS),
        "class_names": lambda k: t.strings(k),
        "threshold": lambda k: t.float(k),
        "activation": lambda k: t.str(k, choices=ACTIVATIONS),
        "output": lambda k: t.str(k),
        "rating_edges": lambda k: t.numbers(k),
        "tolerance": lambda k: t.float(k, low=0),
        "min_dice": lambda k: t.float(k, low=0, high=1),
        # segmentation flip thresholds beyond Dice (any failing one flips; see audit.metrics.segmentation_flips)
        "hd95_max_mm": lambda k: t.float(k, low=0),
        "contour_error_max_mm": lambda k: t.float(k, low=0),
        "filled_dice_min": lambda k: t.float(k, low=0, high=1),
        "contour_metrics": lambda k: t.bool(k),
        # detection (audit.artifact.heads: formats, operating point, matching and new-FP radii), any task's OOD
        # score, and the sliding window of detection / segmentation volumes larger than the model input
        "detection_format": lambda k: t.str(k, choices=DETECTION_FORMATS),
        "centres_output": lambda k: t.str(k),
        "peak_threshold": lambda k: t.float(k),
        "nms_radius_mm": lambda k: t.float(k, low=0),
        "min_radius_mm": lambda k: t.float(k, low=0),
        "fp_radius_mm": lambda k: t.float(k, low=0),
        "ood_output": lambda k: t.str(k),
        "window_overlap": lambda k: _voxels(t, k),
        "window_margin": lambda k: _voxels(t, k),
        "window_blend": lambda k: t.str(k, choices=BLENDS),
    }
    for key, get in getters.items():
        if key in t:
            out[key] = get(key)
    t.done(getters)
    return MappingProxyType(out)


def preprocess_section(t: Table) -> Mapping[str, Any]:
    """``[preprocess]``: ``hu_window = [lo, hi]`` (hi > lo) and ``clip``."""
    out: dict[str, Any] = {}
    if "hu_window" in t:
        lo, hi = t.numbers("hu_window", length=2)
        if not hi > lo:
            raise ConfigError(f"preprocess.hu_window: expected [lo, hi] with hi > lo, got {[lo, hi]}")
        out["hu_window"] = (lo, hi)
    if "clip" in t:
        out["clip"] = t.bool("clip")
    t.done(("hu_window", "clip"))
    return MappingProxyType(out)


def data_section(t: Table) -> DataSection:
    """``[data]``: exactly one of ``manifest`` (CSV) or ``phantom``."""
    if ("manifest" in t) == ("phantom" in t):
        raise ConfigError("data: set exactly one of data.manifest (CSV) or data.phantom")
    section = DataSection(
        manifest=t.path("manifest", None), phantom=t.str("phantom", None, choices=PHANTOMS),
        n=t.int("n", 100, low=1), seed=t.int("seed", 1, low=0, high=2**63 - 1), spacing=t.numbers("spacing", None, low=0, low_open=True),
        class_names=t.strings("class_names", ()), cube=t.int("cube", 32, low=1),
        target_spacing=t.float("target_spacing", 1.0, low=0, low_open=True))
    t.done(("manifest", "phantom", "n", "seed", "spacing", "class_names", "cube", "target_spacing"))
    return section


def noise_section(t: Table, **defaults: Any) -> NoiseSpec:
    """``[noise]``: see ``audit.campaign.noise.NoiseSpec`` for the kinds, modes and keys."""
    kw: dict[str, Any] = dict(defaults)
    if "kind" in t:
        kw["kind"] = t.str("kind", choices=KINDS)
    if "mode" in t:
        kw["mode"] = t.str("mode", choices=MODES)
    given = [k for k in ("levels", "fractions", "ctdivol_mgy") if k in t]
    if len(given) > 1:
        raise ConfigError(f"{t.key(given[1])}: give one of levels (mAs), fractions (of the acquired dose) or "
                          f"ctdivol_mgy (CTDIvol levels), not {' and '.join(given)}")
    if "ctdivol_mgy" in t:
        kw["ctdivol_mgy"] = t.numbers("ctdivol_mgy", low=0, low_open=True)
    if "spatial" in t:
        kw["spatial"] = t.str("spatial", choices=SPATIAL)
    if "kernel_table" in t:
        path = t.path("kernel_table")
        kw["kernel_table"] = str(path)
        kw["kernel_rows"] = read_kernel_table(path)
    if "levels" in t:
        kw["levels"] = t.numbers("levels", low=0, low_open=True)
    if "fractions" in t:
        fractions = t.numbers("fractions", low=0, low_open=True)
        bad = [f for f in fractions if f >= 1]
        if bad:
            raise ConfigError(f"{t.key('fractions')}: expected numbers in (0, 1) (fractions of the acquired dose; a "
                              f"reduction can only lower it), got {bad[0]:g}")
        kw["fractions"] = fractions
    if "scan_noise" in t:
        kw["scan_noise"] = t.str("scan_noise", choices=SCAN_NOISE)
    for key in ("acquired_mas", "phantom_mas", "reference_diameter_mm", "roi_mm", "acquired_ctdivol_mgy"):
        if key in t:
            kw[key] = t.float(key, low=0, low_open=True)
    if "phantom_series" in t:
        kw["phantom_series"] = tuple(str(t.base / p if t.base is not None and not Path(p).is_absolute() else p)
                                     for p in t.strings("phantom_series"))
    if "strict_kernel" in t:
        kw["strict_kernel"] = t.bool("strict_kernel")
    if "bank" in t:  # opt-in noise bank (screening runs): true = BANK_FIELDS fields per level, or their number
        v = t.raw_value("bank")
        if isinstance(v, bool):
            kw["bank"] = BANK_FIELDS if v else 0
        else:
            kw["bank"] = t.int("bank", low=1, high=2**20)
    for key in ("draws", "seed"):
        if key in t:
            kw[key] = t.int(key, low=1 if key == "draws" else 0, high=2**63 - 1)
    for key in ("preset", "method"):
        if key in t:
            kw[key] = t.str(key)
    for key, low_open in (("sigma_ref", True), ("mas_ref", True), ("electronic_fraction", False), ("cutoff", True),
                          ("z_fwhm_mm", True)):
        if key in t:
            kw[key] = t.float(key, low=0, low_open=low_open)
    if "table" in t:
        path = t.path("table")
        table = read_nps_table(path)
        kw["table"] = str(path)
        kw["table_values"] = tuple(zip(table.freq.tolist(), table.values.tolist()))
    t.done(NOISE_KEYS)
    return NoiseSpec(**kw)


def campaign_threads(entries: tuple[ModelEntry, ...]) -> tuple[ModelEntry, ...]:
    """``audit run``: an ONNX Runtime model with neither ``threads`` nor ``streams`` gets the campaign's layout
    (``thread_layout``: single-thread runs, one stream per core; the campaign's workers, one per core, each run it
    unsplit on the batches they made). ``threads`` or ``streams`` given in the config win."""
    layout = thread_layout().engine_options()
    return tuple(dataclasses.replace(e, options=MappingProxyType({**e.options, **layout}))
                 if e.engine == "onnxruntime" and not {"threads", "streams"} & set(e.options) else e for e in entries)


def run_section(t: Table) -> RunOptions:
    kw = {key: t.int(key) for key in ("batch_size", "shard_samples", "noise_workers", "prefetch") if key in t}
    t.done(("batch_size", "shard_samples", "noise_workers", "prefetch"))
    return RunOptions(**kw)


def scan_arm_section(t: Table) -> ScanArm:
    source = t.str("source", "phantom_scanner")
    if source != "phantom_scanner":
        raise ConfigError(f"scan_arm.source: expected 'phantom_scanner' (DICOM series come later), got {source!r}")
    if "mas" not in t:
        raise ConfigError("scan_arm.mas: missing; the dose of the repeated scans in mAs")
    arm = ScanArm(mas=t.float("mas", low=0, low_open=True), scans=t.int("scans", 20, low=2), draws=t.int("draws", 100, low=1),
                  seed=t.int("seed", 0, low=0), patch_mm=t.float("patch_mm", 6.8, low=0, low_open=True),
                  overlap=t.float("overlap", 0.3, low=0, high=1, high_open=True), source=source)
    t.done(("source", "mas", "scans", "draws", "seed", "patch_mm", "overlap"))
    return arm


def attack_section(t: Table, noise: NoiseSpec | None) -> AttackSpec:
    """An ``[attack]`` table (``ATTACK_RUN_KEYS`` plus the attack's own parameters) -> ``AttackSpec``, its parameters
    checked against the attack now; ``noise`` is the config's ``[noise]`` (the target of ``nps_ascent`` only)."""
    if "name" not in t:
        raise ConfigError(f"attack.name: missing; expected one of {sorted(ATTACKS)}")
    name = t.str("name")  # checked against the attacks by check_attack_params
    seed = t.int("seed", 0, low=0)
    batch = t.int("batch_size", 16, low=1)
    keep = t.int("keep", 4, low=0)
    samples = t.int("samples", None, low=1)
    explain = t.bool("explain", True)
    params = t.rest()
    for key in ("generator", "ood"):
        if key in params:
            params[key] = str(t.path(key))
    check_attack_params(name, params)
    if ATTACKS[name].wants_nps(params):  # nps_ascent, nps_search, an ensemble with either: the dose's NPS
        noise = NoiseSpec() if noise is None else noise
        if noise.kind != "nps":
            raise ConfigError(f"noise.kind: attacks use an NPS target; expected 'nps', got {noise.kind!r}")
    else:
        noise = None
    return AttackSpec(name, MappingProxyType(params), seed, batch, keep, explain, samples, noise)


# ---------------------------------------------------------------- files


def parse_config(raw: Mapping[str, Any], base: Path) -> AuditConfig:
    check_sections(raw, SECTIONS)
    # Unknown keys anywhere come first: a typo is the likeliest mistake.
    tables = {name: Table.of(raw, name, base) for name in SECTIONS if name != "model"}
    pacs = pacs_section(tables["pacs"]) if "pacs" in raw else None
    noise = noise_section(tables["noise"])
    models = campaign_threads(model_entries(raw.get("model"), base))
    data = data_section(tables["data"])
    run = run_section(tables["run"])
    report = tables["report"]
    worst, dicom = report.int("worst", 6, low=0), report.bool("dicom", False)
    report.done(("worst", "dicom"))
    arm = scan_arm_section(tables["scan_arm"]) if "scan_arm" in raw else None
    attack = attack_section(tables["attack"], noise) if "attack" in raw else None
    return AuditConfig(models, head_section(tables["head"]), preprocess_section(tables["preprocess"]), data, noise, run,
                       worst, base, dicom_cases=dicom or bool(pacs is not None and pacs.push_target), scan_arm=arm, pacs=pacs,
                       attack=attack, track=track_section(tables["track"]) if "track" in raw else None)


def parse_attack_config(raw: Mapping[str, Any], base: Path) -> AttackConfig:
    check_sections(raw, ATTACK_SECTIONS)
    m = Table.of(raw, "model", base)
    if "path" not in m:
        raise ConfigError("model.path: missing; set it to the deployed ONNX file")
    path = m.path("path")
    options = {k: v for k, v in (("threads", m.int("threads", None, low=0, high=MAX_THREADS)),
                                 ("optimization", m.str("optimization", None)))
               if v is not None}
    entry = ModelEntry(path, m.str("name", path.stem), "onnxruntime", MappingProxyType(options))
    checkpoint = m.path("checkpoint", None)
    net = m.str("net", None, choices=tuple(REGISTRY))
    variant = m.str("variant", None)
    m.done(("path", "name", "threads", "optimization", "checkpoint", "net", "variant"))
    if checkpoint is not None and net is None:
        raise ConfigError("model.net: missing; a checkpoint needs the registry name of its net (e.g. 'nodule3d')")
    noise = noise_section(Table.of(raw, "noise", base)) if "noise" in raw else None
    spec = attack_section(Table.of(raw, "attack", base), noise)
    return AttackConfig(entry, checkpoint, net, variant, head_section(Table.of(raw, "head", base)),
                        preprocess_section(Table.of(raw, "preprocess", base)), data_section(Table.of(raw, "data", base)),
                        spec, base)


def parse_retrain_config(raw: Mapping[str, Any], base: Path) -> RetrainConfig:
    """``[model]`` name, variant, quick, cache_dir; ``[retrain]`` the loop; ``[attack]`` as ``audit attack``'s;
    ``[noise]`` as ``audit run``'s (the per-round audit; default: the standard preset at 5 doses, 20 draws)."""
    check_sections(raw, RETRAIN_SECTIONS)
    m, r = Table.of(raw, "model", base), Table.of(raw, "retrain", base)
    name = m.str("name", "nodule3d")
    if name not in REGISTRY:
        raise ConfigError(f"model.name: unknown model {name!r}; expected one of {', '.join(REGISTRY)}")
    trainer = REGISTRY[name].blueprint().trainer  # fine-tuning is written for single-stage models, per-image labels
    if trainer in RETRAIN_REFUSED:
        raise ConfigError(f"model.name: {name!r} cannot be retrained here ({RETRAIN_REFUSED[trainer]})")
    kw: dict[str, Any] = {"model": name, "variant": m.str("variant", None),
                          "quick": m.bool("quick", True), "cache_dir": m.str("cache_dir", None)}
    m.done(("name", "variant", "quick", "cache_dir"))
    kw.update(mode=r.str("mode", "adaptive", choices=RETRAIN_MODES), rounds=r.int("rounds", 2, low=1),
              epochs=r.int("epochs", 10, low=1), lr=r.float("lr", 5e-4, low=0, low_open=True),
              train_samples=r.int("train_samples", 64, low=2), test_samples=r.int("test_samples", 64, low=2),
              seed=r.int("seed", 0, low=0), uniform_amplitude=r.float("uniform_amplitude", 50.0, low=0, low_open=True),
              audit=r.bool("audit", True))
    r.done(("mode", "rounds", "epochs", "lr", "train_samples", "test_samples", "seed", "uniform_amplitude", "audit"))
    noise = noise_section(Table.of(raw, "noise", base), draws=20) if "noise" in raw else NoiseSpec(draws=20)
    kw["noise"] = noise
    if "attack" in raw:
        kw["attack"] = attack_section(Table.of(raw, "attack", base), noise)
    return RetrainConfig(**kw)


def _load(path: str | Path, parse: Any) -> Any:
    path = Path(path)
    raw = read_toml(path)
    try:
        return parse(raw, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_config(path: str | Path) -> AuditConfig:
    return dataclasses.replace(_load(path, parse_config), path=Path(path))


def load_attack_config(path: str | Path) -> AttackConfig:
    return _load(path, parse_attack_config)


def load_retrain_config(path: str | Path) -> RetrainConfig:
    return _load(path, parse_retrain_config)
