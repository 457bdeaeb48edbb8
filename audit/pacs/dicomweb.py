"""A DICOMweb PACS as a data source and a destination: QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Built on ``dicomweb-client`` over a ``requests`` session (basic auth, TLS
verification, timeouts). Transient failures (unreachable, connection cut,
timeout, HTTP 5xx/408/429, a series that arrived incomplete) are retried with
exponential backoff; what remains is one ``PacsError`` line naming the server
and the UID. Messages are composed here, never copied from the HTTP stack, so
credentials cannot leak into them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from audit.errors import InputError, MissingExtraError
from audit.pacs.cache import SeriesCache, check_uid
from audit.pacs.config import PacsServer

T = TypeVar("T")
_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
_STUDY, _SERIES, _COUNT, _MODALITY, _DESCRIPTION = "0020000D", "0020000E", "00201209", "00080060", "0008103E"


class PacsError(InputError):
    """The PACS refused or failed a request; the message names the server, the UID and the reason."""


class _Transient(Exception):
    """A failure worth another attempt; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SeriesRef:
    """A series on the server, as QIDO-RS reports it."""

    study_uid: str
    series_uid: str
    instances: int
    modality: str = ""
    description: str = ""


def _import_client():
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError as exc:
        raise MissingExtraError(f"dicomweb-client is needed for PACS access but is not importable ({exc}); "
                                "install it with: pip install 'ct-robustness-audit[pacs]'") from exc
    return DICOMwebClient


def _value(item: dict, tag: str, default=None):
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


class DicomWebPacs:
    """Talk to one ``PacsServer``; retrieved series go through its bounded ``SeriesCache``.

    ``sleep`` is the wait between attempts (replaceable so tests can count them).
    """

    def __init__(self, server: PacsServer, *, sleep: Callable[[float], None] = time.sleep) -> None:
        import requests

        self.server = server
        self.url = server.display_url
        self.cache = SeriesCache(server.cache_root, int(server.cache_max_mb * 1024 * 1024))
        self._sleep = sleep
        session = requests.Session()
        session.verify = str(server.ca_bundle) if (server.verify_tls and server.ca_bundle) else bool(server.verify_tls)
        creds = server.credentials()
        if creds is not None:
            session.auth = creds
        self._client = _import_client()(server.url.rstrip("/"), session=session, timeout=server.timeout)
        self._client.set_http_retry_params(retry=False)  # retries are ours: they cover connection errors too
        self.attempts = 0  # requests attempted, for tests and logs

    def __repr__(self) -> str:
        return f"DicomWebPacs({self.url!r})"

    # -- the retry loop --------------------------------------------------------------------------------

    def _error(self, subject: str, reason: str) -> PacsError:
        return PacsError(f"PACS {self.url}: {subject}: {reason}")

    def _classify(self, exc: BaseException, subject: str) -> Exception:
        """A ``_Transient`` to retry, or the final ``PacsError``."""
        import requests

        if isinstance(exc, (_Transient, InputError)):
            return exc
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            code = exc.response.status_code
            if code in _TRANSIENT_STATUS:
                return _Transient(f"HTTP {code} from the server")
            if code in (401, 403):
                what = "unauthorized" if code == 401 else "forbidden"
                return self._error(subject, f"HTTP {code} {what}; check the credentials named by pacs.username_env/"
                                            "password_env or pacs.credentials_file")
            if code == 404:
                return self._error(subject, "not found on the server (HTTP 404)")
            return self._error(subject, f"the server answered HTTP {code}")
        if isinstance(exc, requests.exceptions.SSLError):
            return self._error(subject, "TLS verification failed; give pacs.ca_bundle for a private CA "
                                        "(or verify_tls = false on a trusted network)")
        if isinstance(exc, requests.Timeout):
            return _Transient(f"no answer within {self.server.timeout:g} s")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return _Transient("transfer cut off mid-series")
        if isinstance(exc, requests.ConnectionError):
            return _Transient("server unreachable or connection lost")
        from pydicom.errors import InvalidDicomError

        if isinstance(exc, (ValueError, EOFError, InvalidDicomError)):  # a malformed multipart body or DICOM part
            return _Transient(f"malformed or cut-off answer ({type(exc).__name__})")
        raise exc

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

    # -- QIDO-RS ---------------------------------------------------------------------------------------

    def find_series(self, series_uid: str, study_uid: str | None = None) -> SeriesRef | None:
        """The series as QIDO-RS reports it (study, instance count), or None when the server has no such series."""
        series_uid = check_uid(series_uid, "series")
        study_uid = check_uid(study_uid, "study") if study_uid else None

        def search():
            return self._client.search_for_series(study_instance_uid=study_uid, search_filters={"SeriesInstanceUID": series_uid},
                                                  fields=["NumberOfSeriesRelatedInstances"])

        found = [r for r in self._retrying(f"series {series_uid}", search) if _value(r, _SERIES) == series_uid]
        if not found:
            return None
        r = found[0]
        count = _value(r, _COUNT)
        return SeriesRef(str(_value(r, _STUDY, study_uid or "")), series_uid, int(count) if count is not None else -1,
                         str(_value(r, _MODALITY, "")), str(_value(r, _DESCRIPTION, "")))

    def locate(self, series_uid: str, study_uid: str | None = None) -> SeriesRef:
        """Like ``find_series``, but a missing series is a ``PacsError`` naming it."""
        ref = self.find_series(series_uid, study_uid)
        if ref is None:
            where = f" in study {study_uid}" if study_uid else ""
            raise self._error(f"series {series_uid}", f"not found on the server{where}")
        return ref

    # -- WADO-RS ---------------------------------------------------------------------------------------

    def fetch(self, series_uid: str, study_uid: str | None = None) -> Path:
        """A local folder holding the complete series (from the cache, or retrieved into it now).

        A retrieval is written into a temporary folder and counted against
        QIDO's NumberOfSeriesRelatedInstances before it becomes a cache entry,
        so a partially retrieved series is never read.
        """
        cached = self.cache.get(series_uid)
        if cached is not None:
            return cached
        ref = self.locate(series_uid, study_uid)
        subject = f"series {ref.series_uid}"

        def retrieve() -> Path:
            with self.cache.put(ref.series_uid) as tmp:
                n = self._retrieve_into(ref, tmp)
                if ref.instances >= 0 and n != ref.instances:
                    raise _Transient(f"transfer cut off mid-series ({n} of {ref.instances} instances arrived); "
                                     "nothing kept")
                if n == 0:
                    raise self._error(subject, "the server sent no instances")
            return self.cache.folder(ref.series_uid)

        return self._retrying(subject, retrieve)

    def _retrieve_into(self, ref: SeriesRef, folder: Path) -> int:
        seen = set()
        for ds in self._client.iter_series(ref.study_uid, ref.series_uid):
            sop, series = str(ds.get("SOPInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
            if not sop or not series or not _complete_pixels(ds):
                raise _Transient("transfer cut off mid-series (a truncated instance arrived); nothing kept")
            if series != ref.series_uid:
                raise self._error(f"series {ref.series_uid}", f"the server sent an instance of series {series}")
            if sop in seen:
                continue
            seen.add(sop)
            ds.save_as(folder / f"{check_uid(sop, 'instance')}.dcm", enforce_file_format=True)
        return len(seen)

    # -- STOW-RS ---------------------------------------------------------------------------------------

    def store(self, files: Sequence[Path], study_uid: str, series_uid: str) -> None:
        """Store one series' files (all of ``study_uid``/``series_uid``); checked by QIDO afterwards.

        Re-storing an instance the server already holds is harmless, so a retry
        after a cut-off completes a partial series instead of duplicating it.
        """
        import pydicom

        subject = f"series {series_uid}"
        datasets = [pydicom.dcmread(f) for f in files]
        for ds, f in zip(datasets, files):
            if ds.StudyInstanceUID != study_uid or ds.SeriesInstanceUID != series_uid:
                raise InputError(f"{f}: belongs to series {ds.SeriesInstanceUID}, not {series_uid}")

        def stow():
            answer = self._client.store_instances(datasets, study_instance_uid=study_uid)
            failed = (answer.get("FailedSOPSequence") or []) if answer is not None else []
            if failed:
                raise self._error(subject, f"the server refused {len(failed)} of {len(datasets)} instances")

        self._retrying(subject, stow)
        ref = self.find_series(series_uid, study_uid)
        if ref is None or ref.instances != len(datasets):
            got = 0 if ref is None else ref.instances
            raise self._error(subject, f"after STOW-RS the server holds {got} of {len(datasets)} instances")

    def series_instances(self, series_uid: str, study_uid: str | None = None) -> int:
        """How many instances of the series the server holds (0 when none)."""
        ref = self.find_series(series_uid, study_uid)
        return 0 if ref is None else max(ref.instances, 0)


def _complete_pixels(ds) -> bool:
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


def connect(server: PacsServer | DicomWebPacs) -> DicomWebPacs:
    """A client for ``server`` (a client is passed through)."""
    return server if isinstance(server, DicomWebPacs) else DicomWebPacs(server)


def parse_row(path: str) -> tuple[str | None, str] | None:
    """``dicomweb:<SeriesUID>`` or ``dicomweb:<StudyUID>/<SeriesUID>`` -> (study or None, series); else None."""
    if not path.startswith("dicomweb:"):
        return None
    body = path[len("dicomweb:"):].strip().strip("/")
    parts = body.split("/")
    if len(parts) == 1:
        return None, check_uid(parts[0], "series")
    if len(parts) == 2:
        return check_uid(parts[0], "study"), check_uid(parts[1], "series")
    raise InputError(f"{path}: expected dicomweb:<SeriesInstanceUID> or dicomweb:<StudyInstanceUID>/<SeriesInstanceUID>")


def iter_files(folder: Path) -> Iterable[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix == ".dcm")
