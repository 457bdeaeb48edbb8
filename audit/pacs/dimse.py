"""A DIMSE PACS (``url = "dicom://host:port"``): C-FIND search, C-GET or C-MOVE retrieval, C-STORE, with pynetdicom.

The same semantics as DICOMweb (``audit.pacs.client``): a series is found with
a series-level C-FIND (Study Root) that states NumberOfSeriesRelatedInstances
(else an image-level C-FIND counts them), retrieved into a temporary folder of
the bounded cache and kept only when complete; a cached series is used only
while the server's count matches; unreachable servers, aborted associations
and cut-off transfers are retried with backoff; a rejected association, an
unknown UID or a refused store is one line naming the server and the UID.

C-GET receives the instances on the same association (this tool takes the
storage SCP role for the CT storage SOP classes). C-MOVE asks the PACS to send
them to this tool's AE title (``pacs.ae_title``), which the PACS must know at
this host and ``pacs.move_port``; a storage SCP listens there during the move
and accepts only the PACS's AE title (``pacs.called_ae``). With ``tls = true``
associations run over TLS, the server's certificate checked as for https
(``ca_bundle``, ``verify_tls``). pynetdicom is imported when a client is
opened (the ``pacs`` extra).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path
from typing import Callable, Iterator

from audit.errors import InputError, MissingExtraError
from audit.pacs.cache import check_uid
from audit.pacs.client import PacsClient, PacsError, SeriesRef, Transient, complete_pixels
from audit.pacs.config import PacsServer

#: Storage SOP classes a retrieval accepts: CT Image, Enhanced CT Image, Legacy Converted Enhanced CT Image.
CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
FIND, GET, MOVE = "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.2.3", "1.2.840.10008.5.1.4.1.2.2.2"
_SUCCESS, _PENDING, _STORE_OK = 0x0000, (0xFF00, 0xFF01), (0x0000, 0xB000, 0xB006, 0xB007)


def _import_pynetdicom():
    try:
        import pynetdicom
    except ImportError as exc:
        raise MissingExtraError(f"pynetdicom is needed for a DIMSE PACS (dicom://) but is not importable ({exc}); "
                                "install it with: pip install 'ct-robustness-audit[pacs]'") from exc
    return pynetdicom


class _Failed(Exception):
    """A final answer of the server (not worth another attempt); ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _status(status) -> int | None:
    """The status code of a DIMSE answer, or None when the association ended without one (aborted, timed out)."""
    return int(status.Status) if status is not None and "Status" in status else None


class DimsePacs(PacsClient):
    """Talk to one DIMSE ``PacsServer``; retrieved series go through its bounded ``SeriesCache``."""

    protocol = "DIMSE"

    def __init__(self, server: PacsServer, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if not server.is_dimse:
            raise InputError(f"PACS {server.display_url}: not a dicom:// URL; open it with audit.pacs.connect")
        super().__init__(server, sleep=sleep)
        self._pnd = _import_pynetdicom()

    # -- associations and failures ---------------------------------------------------------------------

    def _classify(self, exc: BaseException, subject: str) -> Exception:
        if isinstance(exc, (Transient, InputError)):
            return exc
        if isinstance(exc, _Failed):
            return self._error(subject, exc.reason)
        raise exc

    def _new_ae(self):
        ae = self._pnd.AE(ae_title=self.server.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.server.timeout
        return ae

    def _tls_context(self) -> ssl.SSLContext:
        """The server's certificate checked as for https: against ``ca_bundle`` (else the system's CAs), unless
        ``verify_tls = false``."""
        ca = str(self.server.ca_bundle) if self.server.ca_bundle else None
        try:
            context = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise _Failed(f"cannot use pacs.ca_bundle {ca} ({getattr(exc, 'strerror', None) or exc})") from None
        if not self.server.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _tls_refusal(self) -> str | None:
        """Why a TLS handshake with the server fails verification (after a failed association), else None."""
        try:
            with socket.create_connection((self.server.host, self.server.port), timeout=self.server.timeout) as raw:
                with self._tls_context().wrap_socket(raw, server_hostname=self.server.host):
                    return None
        except ssl.SSLCertVerificationError:
            return ("TLS verification failed; give pacs.ca_bundle for a private CA (or verify_tls = false on a "
                    "trusted network)")
        except OSError:
            return None

    @contextlib.contextmanager
    def _association(self, contexts, *, roles=(), handlers=()) -> Iterator:
        """An association with the PACS proposing ``contexts`` (SOP class UIDs), released (or aborted) afterwards."""
        ae = self._new_ae()
        for uid in contexts:
            ae.add_requested_context(uid)
        tls = (self._tls_context(), self.server.host) if self.server.tls else None
        assoc = ae.associate(self.server.host, self.server.port, ae_title=self.server.called_ae,
                             ext_neg=list(roles) or None, evt_handlers=list(handlers) or None, tls_args=tls)
        if not assoc.is_established:
            ae.shutdown()
            if assoc.is_rejected:
                raise _Failed(f"association rejected; check pacs.ae_title ({self.server.ae_title}, known to the PACS?) "
                              f"and pacs.called_ae ({self.server.called_ae}, the PACS's own AE title)")
            refusal = self._tls_refusal() if self.server.tls else None
            if refusal is not None:
                raise _Failed(refusal)
            raise Transient("server unreachable or association refused")
        try:
            yield assoc
        except BaseException:
            assoc.abort()
            raise
        else:
            assoc.release()
        finally:
            ae.shutdown()

    # -- C-FIND ----------------------------------------------------------------------------------------

    def _find(self, query, subject: str) -> list:
        def search() -> list:
            with self._association([FIND]) as assoc:
                found = []
                for status, identifier in assoc.send_c_find(query, FIND):
                    code = _status(status)
                    if code is None:
                        raise Transient(f"association aborted or no answer within {self.server.timeout:g} s")
                    if code in _PENDING:
                        if identifier is not None:
                            found.append(identifier)
                        continue
                    if code != _SUCCESS:
                        raise _Failed(f"C-FIND failed (status 0x{code:04X})")
                return found

        return self._retrying(subject, search)

    def find_series(self, series_uid: str, study_uid: str | None = None) -> SeriesRef | None:
        """The series as a series-level C-FIND reports it (study, instance count), or None when the server has no such
        series; a server that omits NumberOfSeriesRelatedInstances is asked for the series' instances instead."""
        from pydicom.dataset import Dataset

        series_uid = check_uid(series_uid, "series")
        study_uid = check_uid(study_uid, "study") if study_uid else None
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study_uid or ""
        q.SeriesInstanceUID = series_uid
        q.NumberOfSeriesRelatedInstances = ""
        q.Modality = ""
        q.SeriesDescription = ""
        found = [r for r in self._find(q, f"series {series_uid}") if str(r.get("SeriesInstanceUID", "")) == series_uid]
        if not found:
            return None
        r = found[0]
        study = str(r.get("StudyInstanceUID", "") or study_uid or "")
        count = r.get("NumberOfSeriesRelatedInstances", None)
        count = int(count) if count not in (None, "") else self._count_instances(study, series_uid)
        return SeriesRef(study, series_uid, count, str(r.get("Modality", "") or ""),
                         str(r.get("SeriesDescription", "") or ""))

    def _count_instances(self, study_uid: str, series_uid: str) -> int:
        from pydicom.dataset import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        q.SOPInstanceUID = ""
        return len({str(r.get("SOPInstanceUID", "")) for r in self._find(q, f"series {series_uid}")} - {""})

    # -- C-GET / C-MOVE --------------------------------------------------------------------------------

    def _retrieve_into(self, ref: SeriesRef, folder: Path) -> int:
        from pydicom.dataset import Dataset

        subject = f"series {ref.series_uid}"
        seen: set[str] = set()
        problems: list[str] = []

        def on_store(event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sop, series = str(ds.get("SOPInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
            if series != ref.series_uid:
                problems.append(f"the server sent an instance of series {series}")
                return 0xA900
            if not sop or not complete_pixels(ds):
                problems.append("truncated")
                return 0xA700
            if sop not in seen:
                ds.save_as(folder / f"{check_uid(sop, 'instance')}.dcm", enforce_file_format=True)
                seen.add(sop)
            return _SUCCESS

        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = ref.study_uid
        q.SeriesInstanceUID = ref.series_uid
        handlers = [(self._pnd.evt.EVT_C_STORE, on_store)]
        if self.server.retrieve == "move":
            answers = self._move(q, handlers)
        else:
            roles = [self._pnd.build_role(uid, scp_role=True) for uid in CT_STORAGE]
            with self._association([GET, *CT_STORAGE], roles=roles, handlers=handlers) as assoc:
                answers = list(assoc.send_c_get(q, GET))
        wrong = [p for p in problems if p.startswith("the server sent")]
        if wrong:
            raise self._error(subject, wrong[0])
        if problems:
            raise Transient("transfer cut off mid-series (a truncated instance arrived); nothing kept")
        self._check_final(answers, "C-MOVE" if self.server.retrieve == "move" else "C-GET")
        return len(seen)

    def _move(self, query, handlers) -> list:
        """C-MOVE to this tool's storage SCP on ``move_port``, listening only while the move runs."""
        scp = self._new_ae()
        for uid in CT_STORAGE:
            scp.add_supported_context(uid)
        scp.require_calling_aet = [self.server.called_ae]
        try:
            listener = scp.start_server(("", int(self.server.move_port)), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise _Failed(f"cannot listen on pacs.move_port {self.server.move_port} for C-MOVE "
                          f"({exc.strerror or exc})") from None
        try:
            with self._association([MOVE]) as assoc:
                return list(assoc.send_c_move(query, self.server.ae_title, MOVE))
        finally:
            listener.shutdown()

    def _check_final(self, answers: list, what: str) -> None:
        final = answers[-1][0] if answers else None
        code = _status(final)
        if code is None:
            raise Transient("transfer cut off mid-series (association aborted); nothing kept")
        if code == _SUCCESS:
            return
        failed = int(final.get("NumberOfFailedSubOperations", 0) or 0)
        completed = int(final.get("NumberOfCompletedSubOperations", 0) or 0)
        if what == "C-MOVE" and (code == 0xA801 or not (failed or completed)):
            raise _Failed(f"C-MOVE failed (status 0x{code:04X}); does the PACS know the move destination "
                          f"{self.server.ae_title} (pacs.ae_title) at this host and pacs.move_port "
                          f"{self.server.move_port}?")
        if failed:
            raise Transient(f"{what}: {failed} instance{'s' * (failed != 1)} failed to arrive (status 0x{code:04X})")
        raise _Failed(f"{what} failed (status 0x{code:04X})")

    # -- C-STORE ---------------------------------------------------------------------------------------

    def _store_datasets(self, datasets: list, study_uid: str, series_uid: str) -> None:
        subject = f"series {series_uid}"
        classes = sorted({str(ds.SOPClassUID) for ds in datasets})

        def send() -> None:
            with self._association(classes) as assoc:
                refused = 0
                for ds in datasets:
                    code = _status(assoc.send_c_store(ds))
                    if code is None:
                        raise Transient("association aborted mid-series")
                    refused += code not in _STORE_OK
                if refused:
                    raise _Failed(f"the server refused {refused} of {len(datasets)} instances (C-STORE)")

        self._retrying(subject, send)


__all__ = ["CT_STORAGE", "DimsePacs", "PacsError"]
