"""A DICOMweb PACS as a data source and a destination: QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Built on ``dicomweb-client`` over a ``requests`` session (UTF-8 basic auth or a
bearer token, TLS verification pinned to the config whatever the environment
says, timeouts). Transient failures (unreachable, connection cut,
timeout, HTTP 5xx/408/429, a series that arrived incomplete) are retried with
exponential backoff; what remains is one ``PacsError`` line naming the server
and the UID. Messages are composed here, never copied from the HTTP stack, so
credentials cannot leak into them.
"""

from __future__ import annotations

import functools
import time
import warnings
from pathlib import Path
from typing import Callable

from audit.errors import InputError, MissingExtraError
from audit.pacs.cache import check_uid
from audit.pacs.client import PacsClient, SeriesRef, Transient, complete_pixels
from audit.pacs.config import PacsServer

_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
_STUDY, _SERIES, _COUNT, _MODALITY, _DESCRIPTION = "0020000D", "0020000E", "00201209", "00080060", "0008103E"
_SOP = "00080018"


def _import_client():
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError as exc:
        raise MissingExtraError(f"dicomweb-client is needed for PACS access but is not importable ({exc}); "
                                "install it with: pip install 'ct-robustness-audit[pacs]'") from exc
    return DICOMwebClient


@functools.cache
def _pinned_session_class():
    """A ``requests.Session`` whose ``verify`` is the one set on it: requests otherwise lets REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE in the environment replace a configured ``ca_bundle`` or ``verify_tls = false``."""
    import requests

    class PinnedSession(requests.Session):
        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            settings["verify"] = self.verify if verify is None else verify
            return settings

    return PinnedSession


def open_session(server: PacsServer):
    """The HTTP session for ``server``: TLS as configured, credentials read now (basic auth sent as UTF-8, or a
    bearer token), the URL's query sent with every request."""
    session = _pinned_session_class()()
    session.verify = str(server.ca_bundle) if (server.verify_tls and server.ca_bundle) else bool(server.verify_tls)
    if not server.verify_tls:  # asked for in the config: no multi-line urllib3 warning on every request
        from urllib3.exceptions import InsecureRequestWarning

        warnings.filterwarnings("ignore", category=InsecureRequestWarning)
    creds = server.credentials()
    if creds is not None:  # bytes: requests would encode str as Latin-1 (a 401 for 'pässwörd', a crash for '€')
        session.auth = (creds[0].encode("utf-8"), creds[1].encode("utf-8"))
    token = server.token()
    if token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    params = server.query_params()
    if params:
        session.params = dict(params)
    return session


def _value(item: dict, tag: str, default=None):
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else default


class DicomWebPacs(PacsClient):
    """Talk to one DICOMweb ``PacsServer``; retrieved series go through its bounded ``SeriesCache``.

    ``sleep`` is the wait between attempts (replaceable so tests can count them).
    """

    protocol = "DICOMweb"

    def __init__(self, server: PacsServer, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if server.is_dimse:
            raise InputError(f"PACS {server.display_url}: a DIMSE server; open it with audit.pacs.connect")
        super().__init__(server, sleep=sleep)
        client = _import_client()
        self._client = client(server.base_url, session=open_session(server), timeout=server.timeout)
        self._client.set_http_retry_params(retry=False)  # retries are ours: they cover connection errors too

    def __repr__(self) -> str:
        return f"DicomWebPacs({self.url!r})"

    def _classify(self, exc: BaseException, subject: str) -> Exception:
        """A ``Transient`` to retry, or the final ``PacsError``."""
        import requests

        if isinstance(exc, (Transient, InputError)):
            return exc
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            code = exc.response.status_code
            if code in _TRANSIENT_STATUS:
                return Transient(f"HTTP {code} from the server")
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
            return Transient(f"no answer within {self.server.timeout:g} s")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return Transient("transfer cut off mid-series")
        if isinstance(exc, requests.ConnectionError):
            return Transient("server unreachable or connection lost")
        from pydicom.errors import InvalidDicomError

        if isinstance(exc, (ValueError, EOFError, InvalidDicomError)):  # a malformed multipart body or DICOM part
            return Transient(f"malformed or cut-off answer ({type(exc).__name__})")
        raise exc

    # -- QIDO-RS ---------------------------------------------------------------------------------------

    def find_series(self, series_uid: str, study_uid: str | None = None) -> SeriesRef | None:
        """The series as QIDO-RS reports it (study, instance count), or None when the server has no such series.

        A server that omits NumberOfSeriesRelatedInstances is asked for the
        series' instances instead, so the completeness check always has a count.
        """
        series_uid = check_uid(series_uid, "series")
        study_uid = check_uid(study_uid, "study") if study_uid else None

        def search():
            return self._client.search_for_series(study_instance_uid=study_uid, search_filters={"SeriesInstanceUID": series_uid},
                                                  fields=["NumberOfSeriesRelatedInstances"])

        found = [r for r in self._retrying(f"series {series_uid}", search) if _value(r, _SERIES) == series_uid]
        if not found:
            return None
        r = found[0]
        study = str(_value(r, _STUDY, study_uid or ""))
        count = _value(r, _COUNT)
        if count is None:
            count = self._count_instances(study, series_uid)
        return SeriesRef(study, series_uid, int(count), str(_value(r, _MODALITY, "")), str(_value(r, _DESCRIPTION, "")))

    def _count_instances(self, study_uid: str, series_uid: str) -> int:
        """How many instances QIDO-RS lists for the series (its SOP Instance UIDs, each counted once)."""
        def search():
            return self._client.search_for_instances(study_instance_uid=study_uid or None, series_instance_uid=series_uid,
                                                     fields=["SOPInstanceUID"])

        return len({_value(r, _SOP) for r in self._retrying(f"series {series_uid}", search)} - {None})

    # -- WADO-RS ---------------------------------------------------------------------------------------

    def _retrieve_into(self, ref: SeriesRef, folder: Path) -> int:
        seen = set()
        for ds in self._client.iter_series(ref.study_uid, ref.series_uid):
            sop, series = str(ds.get("SOPInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
            if not sop or not series or not complete_pixels(ds):
                raise Transient("transfer cut off mid-series (a truncated instance arrived); nothing kept")
            if series != ref.series_uid:
                raise self._error(f"series {ref.series_uid}", f"the server sent an instance of series {series}")
            if sop in seen:
                continue
            seen.add(sop)
            ds.save_as(folder / f"{check_uid(sop, 'instance')}.dcm", enforce_file_format=True)
        return len(seen)

    # -- STOW-RS ---------------------------------------------------------------------------------------

    def _store_datasets(self, datasets: list, study_uid: str, series_uid: str) -> None:
        subject = f"series {series_uid}"

        def stow():
            answer = self._client.store_instances(datasets, study_instance_uid=study_uid)
            failed = (answer.get("FailedSOPSequence") or []) if answer is not None else []
            if failed:
                raise self._error(subject, f"the server refused {len(failed)} of {len(datasets)} instances")

        self._retrying(subject, stow)
