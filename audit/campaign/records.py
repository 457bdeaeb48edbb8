"""Result records on disk: Parquet shards written atomically, read back per model and level.

One record per perturbed inference: sample (index), level, k, clean label,
perturbed label, score, flip flag and, for segmentation, the Dice to the clean
mask; a segmentation head that computes contour metrics (a contour threshold or
``contour_metrics = true``) adds ``CONTOUR_COLUMNS``: HD95 and the contour error
in mm (+inf where exactly one mask is empty) and the filled-contour Dice. They
are not written otherwise (contour distances cost two distance transforms per
draw; the head's settings are in the fingerprint, so shards of one run agree). A shard is one block of samples at one level for one model; it exists
complete or not at all (temporary file + rename), so a killed run loses at
most the shards in flight and ``--resume`` redoes exactly those.

Layout under ``OUT/records/<model>/``: ``clean-<first>.parquet`` (clean
decisions of a sample block) and ``level-<key>/shard-<first>.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.io import atomic_path
from audit.errors import InputError
from audit.metrics.contours import CONTOUR_COLUMNS  # optional per-draw columns: in every shard of a run or in none

RECORD_COLUMNS = ("sample", "level", "k", "clean_label", "label", "score", "flipped", "dice")
CLEAN_COLUMNS = ("sample", "true_label", "clean_label", "clean_score")


def shard_path(root: Path, model: str, level_key: int, first: int, draws: tuple[int, int] | None = None) -> Path:
    """A shard of all K draws, or of draws k0 <= k < k1 only (a sequential round)."""
    suffix = "" if draws is None else f"-k{draws[0]:06d}-{draws[1]:06d}"
    return root / "records" / model / f"level-{level_key}" / f"shard-{first:08d}{suffix}.parquet"


def clean_path(root: Path, model: str, first: int) -> Path:
    return root / "records" / model / f"clean-{first:08d}.parquet"


def write_table(path: Path, columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: pa.array(v) for k, v in columns.items()})
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


@dataclass
class CleanRecords:
    true_labels: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


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
    return CleanRecords(cols["true_label"][order], cols["clean_label"][order], cols["clean_score"][order])


def load_level(root: Path, model: str, level: float, level_key: int, n: int, k: int) -> LevelRecords:
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
    return LevelRecords(level, grid("label"), grid("score"), grid("flipped").astype(bool), dice, **contours)
