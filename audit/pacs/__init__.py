"""Audit straight from a PACS over DICOMweb or DIMSE, and send flipped cases back to it.

``PacsServer`` (from the ``[pacs]`` config table) says where the server is and
where its credentials are; ``connect`` opens the client its URL names:
``DicomWebPacs`` searches (QIDO-RS), retrieves (WADO-RS) and stores (STOW-RS);
``DimsePacs`` does the same with C-FIND, C-GET or C-MOVE, and C-STORE. Both
retrieve into a bounded ``SeriesCache``, complete or not at all, checked
against the server's instance count. ``push_case`` sends a flipped case's
derived series once. Manifest rows ``pacs:<SeriesUID>`` or
``pacs:<StudyUID>/<SeriesUID>`` (``dicomweb:`` too) are read through it
(``ManifestSource(..., pacs=server)``). dicomweb-client and pynetdicom (the
``pacs`` extra) are imported only when a connection is opened.
"""

from audit.pacs.cache import SeriesCache, Terminated, terminable
from audit.pacs.config import PacsServer, default_cache_dir, pacs_section
from audit.pacs.client import PacsClient, PacsError, SeriesRef, parse_row
from audit.pacs.connection import connect
from audit.pacs.dicomweb import DicomWebPacs
from audit.pacs.dimse import DimsePacs
from audit.pacs.push import push_case, stable_uids

__all__ = ["DicomWebPacs", "DimsePacs", "PacsClient", "PacsError", "PacsServer", "SeriesCache", "SeriesRef", "Terminated",
           "connect", "default_cache_dir", "pacs_section", "parse_row", "push_case", "stable_uids", "terminable"]
