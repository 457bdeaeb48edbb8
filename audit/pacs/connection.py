"""``connect``: the client for a ``PacsServer``, by its URL (``http(s)://`` DICOMweb, ``dicom://`` DIMSE)."""

from __future__ import annotations

from audit.pacs.client import PacsClient
from audit.pacs.config import PacsServer
from audit.pacs.dicomweb import DicomWebPacs
from audit.pacs.dimse import DimsePacs


def connect(server: PacsServer | PacsClient) -> PacsClient:
    """A client for ``server`` (a client is passed through)."""
    if isinstance(server, PacsClient):
        return server
    return DimsePacs(server) if server.is_dimse else DicomWebPacs(server)
