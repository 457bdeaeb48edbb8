"""Audit straight from a PACS over DICOMweb, and send flipped cases back to it.

``PacsServer`` (from the ``[pacs]`` config table) says where the server is and
where its credentials are; ``DicomWebPacs`` searches (QIDO-RS), retrieves
(WADO-RS, into a bounded ``SeriesCache``, complete or not at all) and stores
(STOW-RS); ``push_case`` sends a flipped case's derived series once.
Manifest rows ``dicomweb:<SeriesUID>`` or ``dicomweb:<StudyUID>/<SeriesUID>``
are read through it (``ManifestSource(..., pacs=server)``).
dicomweb-client is imported only when a connection is opened.
"""

from audit.pacs.cache import SeriesCache
from audit.pacs.config import PacsServer
from audit.pacs.dicomweb import DicomWebPacs, PacsError, SeriesRef, connect, parse_row
from audit.pacs.push import push_case, stable_uids

__all__ = ["DicomWebPacs", "PacsError", "PacsServer", "SeriesCache", "SeriesRef", "connect",
           "parse_row", "push_case", "stable_uids"]
