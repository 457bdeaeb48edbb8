"""What every PACS client shares (DICOMweb in ``dicomweb.py``, DIMSE in ``dimse.py``): the retry loop, the one-line
``PacsError``, the series reference, and retrieval into the bounded cache, complete or not at all.

A client subclass supplies ``find_series`` (the series and its instance count on
the server), ``_retrieve_into`` (write the series' instances into a folder),
``_store_datasets`` (send one series) and ``_classify`` (a failure: ``Transient``
to retry, or the final ``PacsError``). Messages are composed here and in the
subclasses, never copied from a network stack, so credentials cannot leak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from audit.errors import InputError
from audit.pacs.cache import SeriesCache, check_uid, terminable
from audit.pacs.config import PacsServer

T = TypeVar("T")
#: Manifest row prefixes naming a series on the configured PACS (``dicomweb:`` kept from before DIMSE).
ROW_PREFIXES = ("pacs:", "dicomweb:", "dimse:")


class PacsError(InputError):
    """The PACS refused or failed a request; the message names the server, the UID and the reason."""


class Transient(Exception):
    """A failure worth another attempt; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SeriesRef:
    """A series on the server, as its search (QIDO-RS or C-FIND) reports it."""

    study_uid: str
    series_uid: str
    instances: int
    modality: str = ""
    description: str = ""


class PacsClient:
    """One ``PacsServer``: retries with backoff, and series fetched through its bounded ``SeriesCache``."""

    protocol = "PACS"

    def __init__(self, server: PacsServer, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.server = server
        self.url = server.display_url
        self.cache = SeriesCache(server.cache_root, int(server.cache_max_mb * 1024 * 1024))
        self._sleep = sleep
        self.attempts = 0  # requests attempted, for tests and logs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- the retry loop --------------------------------------------------------------------------------

    def _error(self, subject: str, reason: str) -> PacsError:
        return PacsError(f"PACS {self.url}: {subject}: {reason}")

    def _classify(self, exc: BaseException, subject: str) -> Exception:
        raise NotImplementedError

    def _retrying(self, subject: str, call: Callable[[], T]) -> T:
        attempts = self.server.retries + 1
        last = ""
        for n in range(attempts):
            if n:
                self._sleep(self.server.backoff * 2 ** (n - 1))
            self.attempts += 1
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - classified below; bugs re-raise
                outcome = self._classify(exc, subject)
                if isinstance(outcome, InputError):
                    raise outcome from None
                last = outcome.reason
        raise self._error(subject, f"{last} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})")

    def find_series(self, series_uid: str, study_uid: str | None = None) -> SeriesRef | None:
        raise NotImplementedError

    def locate(self, series_uid: str, study_uid: str | None = None) -> SeriesRef:
        """Like ``find_series``, but a missing series is a ``PacsError`` naming it."""
        ref = self.find_series(series_uid, study_uid)
        if ref is None:
            where = f" in study {study_uid}" if study_uid else ""
            raise self._error(f"series {series_uid}", f"not found on the server{where}")
        return ref

    def fetch(self, series_uid: str, study_uid: str | None = None, *, ref: SeriesRef | None = None) -> Path:
        """A local folder holding the complete series (from the cache, or retrieved into it now).

        The cached copy is used only while it holds as many instances as the
        server reports now (or as ``ref``, located earlier in this run, says): a
        series that grew since it was cached is retrieved again. A retrieval is
        written into a temporary folder and counted against that number before
        it becomes the cache entry, so a partially retrieved series is never read.
        """
        with terminable(f"retrieving series {series_uid} from PACS {self.url}; nothing partial was kept in the cache"):
            ref = ref if ref is not None else self.locate(series_uid, study_uid)
            cached = self.cache.get(ref.series_uid)
            if cached is not None and self.cache.instances(ref.series_uid) == ref.instances:
                return cached
            subject = f"series {ref.series_uid}"
            current = [ref]

            def retrieve() -> Path:
                r = current[0]
                with self.cache.put(r.series_uid, replace=True) as tmp:
                    n = self._retrieve_into(r, tmp)
                    if r.instances >= 0 and n > r.instances:  # still arriving: count again before the next attempt
                        current[0] = self.find_series(r.series_uid, r.study_uid) or r
                        raise Transient(f"the series grew during the retrieval ({n} instances arrived, {r.instances} "
                                        "counted); nothing kept")
                    if r.instances >= 0 and n != r.instances:
                        raise Transient(f"transfer cut off mid-series ({n} of {r.instances} instances arrived); "
                                        "nothing kept")
                    if n == 0:
                        raise self._error(subject, "the server sent no instances")
                return self.cache.folder(r.series_uid)

            return self._retrying(subject, retrieve)

    def _retrieve_into(self, ref: SeriesRef, folder: Path) -> int:
        raise NotImplementedError

    def store(self, files: Sequence[Path], study_uid: str, series_uid: str) -> None:
        """Store one series' files (all of ``study_uid``/``series_uid``); the server's count is checked afterwards.

        Re-storing an instance the server already holds is harmless, so a retry
        after a cut-off completes a partial series instead of duplicating it.
        """
        import pydicom

        datasets = [pydicom.dcmread(f) for f in files]
        for ds, f in zip(datasets, files):
            if ds.StudyInstanceUID != study_uid or ds.SeriesInstanceUID != series_uid:
                raise InputError(f"{f}: belongs to series {ds.SeriesInstanceUID}, not {series_uid}")
        with terminable(f"storing series {series_uid} on PACS {self.url}; a second run completes it"):
            self._store_datasets(datasets, study_uid, series_uid)
        ref = self.find_series(series_uid, study_uid)
        if ref is None or ref.instances != len(datasets):
            got = 0 if ref is None else ref.instances
            raise self._error(f"series {series_uid}", f"after the {self.protocol} store the server holds {got} of "
                                                      f"{len(datasets)} instances")

    def _store_datasets(self, datasets: list, study_uid: str, series_uid: str) -> None:
        raise NotImplementedError

    def series_instances(self, series_uid: str, study_uid: str | None = None) -> int:
        """How many instances of the series the server holds (0 when none)."""
        ref = self.find_series(series_uid, study_uid)
        return 0 if ref is None else max(ref.instances, 0)


def complete_pixels(ds) -> bool:
    """Whether the instance's pixel data is all there (uncompressed: its exact length; compressed: present)."""
    try:
        data = ds.PixelData
    except (AttributeError, EOFError, ValueError, OSError):
        return False
    if data is None:
        return False
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return len(data) > 0
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return False
    return len(data) >= expected


def parse_row(path: str) -> tuple[str | None, str] | None:
    """``pacs:<SeriesUID>`` or ``pacs:<StudyUID>/<SeriesUID>`` (also ``dicomweb:`` / ``dimse:``) -> (study or None,
    series); None for any other path."""
    prefix = next((p for p in ROW_PREFIXES if path.startswith(p)), None)
    if prefix is None:
        return None
    body = path[len(prefix):].strip().strip("/")
    parts = body.split("/")
    if len(parts) == 1:
        return None, check_uid(parts[0], "series")
    if len(parts) == 2:
        return check_uid(parts[0], "study"), check_uid(parts[1], "series")
    raise InputError(f"{path}: expected {prefix}<SeriesInstanceUID> or {prefix}<StudyInstanceUID>/<SeriesInstanceUID>")


def iter_files(folder: Path) -> Iterable[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix == ".dcm")
