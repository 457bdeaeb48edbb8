"""Audits logged to MLflow (``[track] mlflow = "URI"``; ``audit gate --mlflow URI``), next to the model's other runs.

One MLflow run per audit: the noise spec and each model's hash as params, SAN / SAN fraction / SAR per level, the
critical doses and the clean metrics as metrics, report.json and report.html as artifacts, the gate verdict as the
tag ``audit.gate`` (``pass`` / ``fail``, absent without a policy). MLflow (the ``track`` extra, ``mlflow-skinny``)
is imported only here, only when logging: without it the error is one line naming the extra.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from audit.errors import AuditError, ConfigError
from audit.toml import Table
from kernels._xp import _EXTRAS, optional_import

_EXTRAS.setdefault("mlflow", ("track", "logging audits to MLflow"))
TRACK_KEYS = ("mlflow", "experiment", "run_name")
DEFAULT_EXPERIMENT = "ct-robustness-audit"
_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


@dataclass(frozen=True)
class TrackSpec:
    """``[track]``: the MLflow tracking URI, the experiment and the run name (default: MLflow's)."""

    mlflow: str
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None


def track_section(t: Table) -> TrackSpec:
    """``[track]``: ``mlflow`` (a tracking URI: http(s)://, file://, sqlite://, databricks ...), ``experiment``,
    ``run_name``."""
    unknown = [k for k in t.raw if k not in TRACK_KEYS]  # a typo first: it may be the missing key
    if unknown:
        raise ConfigError(f"{t.key(unknown[0])}: unknown key; allowed: {', '.join(TRACK_KEYS)}")
    if "mlflow" not in t:
        raise ConfigError("track.mlflow: missing; the MLflow tracking URI (e.g. \"http://127.0.0.1:5000\")")
    spec = TrackSpec(t.str("mlflow"), t.str("experiment", DEFAULT_EXPERIMENT), t.str("run_name", None))
    t.done(TRACK_KEYS)
    return spec


def _key(*parts: Any) -> str:
    """An MLflow param/metric name (letters, digits, _ - . space /) from ``parts``."""
    return _BAD.sub("_", "/".join(f"{p:g}" if isinstance(p, float) else str(p) for p in parts))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_contents(report: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """What an audit logs: params, metrics and tags of ``report`` (report.json as a dict)."""
    params: dict[str, str] = {}
    for k, v in (report.get("noise") or {}).items():
        if v is not None and not isinstance(v, dict):
            params[_key("noise", k)] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    metrics: dict[str, float] = {}
    for model in report.get("models", ()):
        name = model["name"]
        engine = model.get("engine") or {}
        params[_key("model", name, "sha256")] = str(engine.get("sha256") or engine.get("metadata_sha256") or "")
        params[_key("model", name, "engine")] = str(engine.get("backend", ""))
        for k, v in (model.get("clean") or {}).items():
            if _number(v):
                metrics[_key(name, "clean", k)] = float(v)
        for block in model.get("levels", ()):
            for k in ("SAN", "SAN_fraction", "SAR_overall"):
                if _number(block.get(k)):
                    metrics[_key(name, k.replace("_overall", ""), "level", float(block["level"]))] = float(block[k])
    for entry in (report.get("summary") or {}).get("models", ()):
        for crit in entry.get("critical_dose") or ():
            if _number(crit.get("dose")):
                metrics[_key(entry["name"], "critical_dose", "SAR", float(crit["target"]))] = float(crit["dose"])
    params = {k: v[:6000] for k, v in params.items()}
    tags = {"audit.schema": str(report.get("schema", ""))}
    verdict = (report.get("summary") or {}).get("verdict")
    if verdict is not None:
        tags["audit.gate"] = str(verdict)
    return params, metrics, tags


def require_mlflow() -> None:
    """Fail now (one line naming the extra) rather than after a campaign when MLflow is not installed."""
    optional_import("mlflow")


def log_audit(spec: TrackSpec, report: Mapping[str, Any], files: Sequence[Path], *, verdict: str | None = None) -> str:
    """Log ``report`` and ``files`` (report.json, report.html: those that exist) as one MLflow run; its run id.
    ``verdict``: the gate's, when ``audit gate`` logs (wins over the report's own)."""
    mlflow = optional_import("mlflow")
    params, metrics, tags = run_contents(report)
    if verdict is not None:
        tags["audit.gate"] = verdict
    try:
        client = mlflow.tracking.MlflowClient(tracking_uri=spec.mlflow)
        experiment = client.get_experiment_by_name(spec.experiment)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(spec.experiment)
        run = client.create_run(experiment_id, run_name=spec.run_name, tags=tags)
        run_id = run.info.run_id
        entities, now = mlflow.entities, int(time.time() * 1000)
        client.log_batch(run_id, params=[entities.Param(k, v) for k, v in params.items()],
                         metrics=[entities.Metric(k, v, now, 0) for k, v in metrics.items()])
        for path in files:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
    except AuditError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types (REST, store, connection)
        text = _safe(" ".join(str(exc).split()))[:700]
        raise AuditError(f"track.mlflow: logging to MLflow at {_safe(spec.mlflow)} failed "
                         f"({exc.__class__.__name__}: {text})") from None
    return run_id


def _safe(uri: str) -> str:
    """The URI without credentials (user:password@)."""
    return re.sub(r"//[^/@]*@", "//", uri)
