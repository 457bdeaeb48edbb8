"""Result records on disk: Parquet shards written atomically, read back per model and level.

One record per perturbed inference: sample (index), level, k, clean label,
perturbed label, score, flip flag and, for segmentation, the Dice to the clean
mask; a segmentation head that computes contour metrics (a contour threshold or
``contour_metrics = true``) adds ``CONTOUR_COLUMNS``: HD95 and the contour error
in mm (+inf where exactly one mask is empty) and the filled-contour Dice. They
are not written otherwise (contour distances cost two distance transforms per
draw; the head's settings are in the fingerprint, so shards of one run agree).

Detection heads (``audit.artifact.heads``: what a detection flip is) add ``DETECTION_COLUMNS`` to level shards:
``missed``, ``gained`` (included reference lesions lost / gained at the operating threshold versus the clean
output), ``new_fp`` (false positives at the threshold with no clean false positive within the head's
``fp_radius_mm``) as int32 counts; per draw lists of every candidate's score (float32, no threshold), role
(``audit.metrics.detection`` HIT / DUPLICATE / IGNORED / FALSE_POSITIVE against the reference lesions, int8) and
lesion (int32, -1 none), and ``lesion_found`` (bool per reference lesion: found at the threshold). ``flipped`` is
any of missed, gained or new_fp. Their clean shards add ``DETECTION_CLEAN_COLUMNS`` (the same lists of the clean
pass, ``n_lesions`` = included lesions, ``lesion_excluded`` per lesion). ``load_level`` / ``load_clean`` give them
back as ``DetectionDraws`` / ``DetectionClean`` with each ``ScanMatch`` rebuilt exactly as ``match_candidates``
made it. A head with ``ood_output`` adds ``ood_score`` (level) and ``clean_ood_score`` (clean) float32.

A shard is one block of samples at one level for one model; it exists
complete or not at all (temporary file + rename), so a killed run loses at
most the shards in flight and ``--resume`` redoes exactly those.

Layout under ``OUT/records/<model>/``: ``clean-<first>.parquet`` (clean
decisions of a sample block) and ``level-<key>/shard-<first>.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.io import atomic_path
from audit.errors import InputError
from audit.metrics.contours import CONTOUR_COLUMNS  # optional per-draw columns: in every shard of a run or in none
from audit.metrics.detection import FALSE_POSITIVE, HIT, ScanMatch

RECORD_COLUMNS = ("sample", "level", "k", "clean_label", "label", "score", "flipped", "dice")
CLEAN_COLUMNS = ("sample", "true_label", "clean_label", "clean_score")
#: Detection level-shard columns (module notes), written only for detection heads.
DETECTION_COLUMNS = ("missed", "gained", "new_fp", "cand_scores", "cand_role", "cand_lesion", "lesion_found")
#: Detection clean-shard columns, written only for detection heads.
DETECTION_CLEAN_COLUMNS = ("clean_cand_scores", "clean_cand_role", "clean_cand_lesion", "clean_lesion_found",
                           "n_lesions", "lesion_excluded")
#: The OOD score columns of a head with ``ood_output`` (level, clean).
OOD_COLUMN, CLEAN_OOD_COLUMN = "ood_score", "clean_ood_score"
#: Element types of the list columns (one list per record): fixed, so an empty list has a type too.
LIST_TYPES = {"cand_scores": "float32", "cand_role": "int8", "cand_lesion": "int32", "lesion_found": "bool",
              "clean_cand_scores": "float32", "clean_cand_role": "int8", "clean_cand_lesion": "int32",
              "clean_lesion_found": "bool", "lesion_excluded": "bool"}


def shard_path(root: Path, model: str, level_key: int, first: int, draws: tuple[int, int] | None = None) -> Path:
    """A shard of all K draws, or of draws k0 <= k < k1 only (a sequential round)."""
    suffix = "" if draws is None else f"-k{draws[0]:06d}-{draws[1]:06d}"
    return root / "records" / model / f"level-{level_key}" / f"shard-{first:08d}{suffix}.parquet"


def clean_path(root: Path, model: str, first: int) -> Path:
    return root / "records" / model / f"clean-{first:08d}.parquet"


def write_table(path: Path, columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: pa.array(list(v), type=pa.list_(pa.from_numpy_dtype(np.dtype(LIST_TYPES[k]))))
                      if k in LIST_TYPES else pa.array(v) for k, v in columns.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_rows(path: Path) -> int | None:
    """Row count of a finished shard, or None if it is missing or unreadable."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError, Exception):  # noqa: BLE001 - pyarrow raises ArrowInvalid etc. for a torn file
        return None


def shard_done(path: Path, expected_rows: int) -> bool:
    return path.is_file() and read_rows(path) == expected_rows


@dataclass
class DetectionDraws:
    """Detection records of one model at one level: ``matches`` N lists of K ``ScanMatch`` (all candidates, the
    reference lesions), ``missed`` / ``gained`` / ``new_fp`` (N, K) int64, ``lesion_changed`` N arrays (K, L_i)
    bool (found at the threshold differs from clean; False where excluded), ``lesion_excluded`` N arrays (L_i,)."""

    matches: list[list[ScanMatch]]
    missed: np.ndarray
    gained: np.ndarray
    new_fp: np.ndarray
    lesion_changed: list[np.ndarray]
    lesion_excluded: list[np.ndarray]


@dataclass
class DetectionClean:
    """Clean detection records: ``matches`` N ``ScanMatch``, ``lesion_found`` N arrays (L_i,) bool at the threshold."""

    matches: list[ScanMatch]
    lesion_found: list[np.ndarray]
    lesion_excluded: list[np.ndarray] | None = None


@dataclass
class LevelRecords:
    """All records of one model at one level as dense (N, K) arrays ordered by sample, then k."""

    level: float
    labels: np.ndarray
    scores: np.ndarray
    flipped: np.ndarray
    dice: np.ndarray | None
    hd95_mm: np.ndarray | None = None
    contour_error_mm: np.ndarray | None = None
    filled_dice: np.ndarray | None = None
    detection: DetectionDraws | None = None
    ood_score: np.ndarray | None = None


@dataclass
class CleanRecords:
    true_labels: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    detection: DetectionClean | None = None
    ood_score: np.ndarray | None = None


def scan_match(scores: Any, role: Any, lesion: Any, n_lesions: int, n_reference: int) -> ScanMatch:
    """The ``ScanMatch`` of one scan from its stored candidates (score, role, lesion) and lesion counts: what
    ``match_candidates`` returned (a lesion's score is its HIT's, the best on it; found = it has a HIT, which an
    excluded lesion never has; false positives keep the candidates' order)."""
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(role, dtype=np.int8)
    a = np.asarray(lesion, dtype=np.int64)
    best = np.full(int(n_reference), -np.inf)
    hits = r == HIT
    best[a[hits]] = s[hits]
    return ScanMatch(np.isfinite(best), best, a, r, s[r == FALSE_POSITIVE], int(n_lesions))


def _read_all(files: list[Path]) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not files:
        return {}
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def load_clean(root: Path, model: str, n: int) -> CleanRecords:
    cols = _read_all(sorted((root / "records" / model).glob("clean-*.parquet")))
    if not cols or len(cols["sample"]) != n or len(np.unique(cols["sample"])) != n:
        raise InputError(f"{root}: clean records of model '{model}' are incomplete; run again with --resume")
    order = np.argsort(cols["sample"])
    detection = None
    if "clean_cand_scores" in cols:
        c = {name: cols[name][order] for name in DETECTION_CLEAN_COLUMNS}
        found = [np.asarray(f, dtype=bool) for f in c["clean_lesion_found"]]
        matches = [scan_match(s, r, a, nl, f.size) for s, r, a, nl, f in
                   zip(c["clean_cand_scores"], c["clean_cand_role"], c["clean_cand_lesion"], c["n_lesions"], found)]
        detection = DetectionClean(matches, found, [np.asarray(e, dtype=bool) for e in c["lesion_excluded"]])
    ood = cols[CLEAN_OOD_COLUMN][order].astype(np.float64) if CLEAN_OOD_COLUMN in cols else None
    return CleanRecords(cols["true_label"][order], cols["clean_label"][order], cols["clean_score"][order],
                        detection, ood)


def load_level(root: Path, model: str, level: float, level_key: int, n: int, k: int,
               clean: CleanRecords | None = None) -> LevelRecords:
    """One level's (N, K) records. ``clean``: the model's ``load_clean`` when the caller holds it (a detection level
    needs the clean matches; without it they are read from the clean shards here)."""
    cols = _read_all(sorted((root / "records" / model / f"level-{level_key}").glob("shard-*.parquet")))
    if not cols or len(cols["sample"]) != n * k:
        got = len(cols["sample"]) if cols else 0
        raise InputError(f"{root}: model '{model}' level {level:g} has {got} of {n * k} records; run again with --resume")
    order = np.lexsort((cols["k"], cols["sample"]))
    pairs = cols["sample"][order].astype(np.int64) * k + cols["k"][order]
    if not np.array_equal(pairs, np.arange(n * k)):
        raise InputError(f"{root}: model '{model}' level {level:g} has duplicated or missing (sample, k) records")

    def grid(name: str) -> np.ndarray:
        return cols[name][order].reshape(n, k)

    dice = grid("dice") if not np.all(np.isnan(cols["dice"].astype(np.float64))) else None
    contours = {c: grid(c).astype(np.float64) for c in CONTOUR_COLUMNS if c in cols}
    detection = None
    if DETECTION_COLUMNS[0] in cols:
        clean = clean if clean is not None else load_clean(root, model, n)
        detection = _detection_draws(root, model, clean, n, k, {c: grid(c) for c in DETECTION_COLUMNS})
    ood = grid(OOD_COLUMN).astype(np.float64) if OOD_COLUMN in cols else None
    return LevelRecords(level, grid("label"), grid("score"), grid("flipped").astype(bool), dice, **contours,
                        detection=detection, ood_score=ood)


def _detection_draws(root: Path, model: str, clean_records: CleanRecords, n: int, k: int,
                     g: dict[str, np.ndarray]) -> DetectionDraws:
    """``DetectionDraws`` from the (N, K) grids of the detection columns and the model's clean records."""
    clean = clean_records.detection
    if clean is None:
        raise InputError(f"{root}: model '{model}' has detection level records but no detection clean records; "
                         "run again in a new --out")
    matches, changed = [], []
    for i in range(n):
        ref = clean.matches[i]
        n_ref = clean.lesion_found[i].size
        matches.append([scan_match(g["cand_scores"][i, j], g["cand_role"][i, j], g["cand_lesion"][i, j],
                                   ref.n_lesions, n_ref) for j in range(k)])
        found = np.array([np.asarray(f, dtype=bool) for f in g["lesion_found"][i]], dtype=bool).reshape(k, n_ref)
        changed.append(found != clean.lesion_found[i][None, :])
    return DetectionDraws(matches, g["missed"].astype(np.int64), g["gained"].astype(np.int64),
                          g["new_fp"].astype(np.int64), changed, list(clean.lesion_excluded or []))
