"""A bounded on-disk cache of retrieved series: one folder per SeriesInstanceUID, least recently used evicted.

An entry appears complete or not at all: a series is downloaded into a hidden
temporary folder, checked, marked complete and renamed into place. Eviction
renames an entry away before deleting it, so a reader never sees half of one.
The cache holds patient data: its root is 0700, entries 0700, files 0600.
A SIGTERM while a series is written (``terminable``) removes the partial
folder, prints one line and exits 143.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from audit.errors import InputError
from audit.io import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, is_temp, remove_stale_temps

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MARKER = ".complete"
#: Temporary folders older than this (seconds) are left over from killed runs and removed.
STALE_S = 3600.0


#: Exit status of a run ended by SIGTERM (128 + 15, as the shell reports it).
EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """SIGTERM arrived while PACS data was being retrieved or stored; exits ``EXIT_SIGTERM`` once cleaned up."""

    def __init__(self) -> None:
        super().__init__(EXIT_SIGTERM)
        self.reported = False


@contextlib.contextmanager
def terminable(what: str) -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` while the block runs, so cache writes in it clean up (``put`` removes its
    temporary folder), then print one line naming ``what`` and the exit status. Only the main thread can take
    signals; elsewhere (and when nested) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread() or getattr(_terminable_state, "active", False):
        yield
        return

    def handler(signum, frame):  # noqa: ARG001 - the signal module's signature
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        yield
        return
    _terminable_state.active = True
    try:
        yield
    except Terminated as exc:
        if not exc.reported:
            exc.reported = True
            print(f"audit: terminated by SIGTERM while {what} (exit {EXIT_SIGTERM})", file=sys.stderr, flush=True)
        raise
    finally:
        _terminable_state.active = False
        signal.signal(signal.SIGTERM, previous)


_terminable_state = threading.local()


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700 when it is ours and more open (patient data)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    st = path.stat()
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and st.st_uid == os.getuid():
        os.chmod(path, PRIVATE_DIR_MODE)


def check_uid(uid: str, what: str = "UID") -> str:
    """A DICOM UID (digits and dots, at most 64 characters), else ``InputError``."""
    uid = str(uid).strip()
    if not _UID.match(uid) or len(uid) > 64:
        raise InputError(f"{what} {uid!r}: not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


class SeriesCache:
    """Series folders under ``root``, at most ``max_bytes`` in all (the newest entry is kept even when larger)."""

    def __init__(self, root: str | os.PathLike, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)

    def folder(self, series_uid: str) -> Path:
        return self.root / check_uid(series_uid, "series")

    def get(self, series_uid: str) -> Path | None:
        """The complete folder of the series (its use time refreshed), or None."""
        folder = self.folder(series_uid)
        marker = folder / MARKER
        if not marker.is_file():
            return None
        with contextlib.suppress(OSError):
            self._touch(marker)
        return folder

    def _touch(self, marker: Path) -> None:
        """Mark an entry as the most recently used: its marker's mtime strictly after every other entry's, so the
        LRU order does not depend on the clock's resolution (two uses within one tick stay ordered)."""
        latest = max((e[0] for e in self.entries()), default=0)
        t = max(time.time_ns(), latest + 1)
        os.utime(marker, ns=(t, t))

    def instances(self, series_uid: str) -> int | None:
        """Instance count recorded when the entry was completed, or None."""
        try:
            return int(json.loads((self.folder(series_uid) / MARKER).read_text())["instances"])
        except (OSError, ValueError, KeyError):
            return None

    @contextlib.contextmanager
    def put(self, series_uid: str, *, replace: bool = False) -> Iterator[Path]:
        """Yield an empty temporary folder; on success it becomes the series' entry, on error it is removed.

        The caller writes the files and must call nothing else; the instance
        count is taken from the ``.dcm`` files in the folder. ``replace``: a
        complete entry already there (an older state of the series) gives way
        to this one; without it the first complete entry is kept.
        """
        final = self.folder(series_uid)
        try:
            private_dir(self.root)
            self._remove_stale()
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=self.root))
        except OSError as exc:
            raise InputError(f"{self.root}: cannot write the PACS cache there ({exc.strerror or exc})") from None
        try:
            yield tmp
            count = 0
            for f in tmp.iterdir():
                os.chmod(f, PRIVATE_FILE_MODE)
                count += f.suffix == ".dcm"
            (tmp / MARKER).write_text(json.dumps({"series_uid": final.name, "instances": count}))
            os.chmod(tmp / MARKER, PRIVATE_FILE_MODE)
            self._touch(tmp / MARKER)
            if final.exists():  # an incomplete leftover, an older state of the series, or another process finished first
                if (final / MARKER).is_file() and not (replace and self.instances(final.name) != count):
                    shutil.rmtree(tmp, ignore_errors=True)
                    self.evict(keep=final.name)
                    return
                self._discard(final)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / MARKER).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.evict(keep=final.name)

    def entries(self) -> list[tuple[int, int, Path]]:
        """(last use in ns, bytes, folder) of every complete entry, oldest first."""
        out = []
        if not self.root.is_dir():
            return out
        for d in self.root.iterdir():
            marker = d / MARKER
            if d.name.startswith(".") or not marker.is_file():
                continue
            try:
                size = sum(f.stat().st_size for f in d.iterdir())
                out.append((marker.stat().st_mtime_ns, size, d))
            except OSError:
                continue  # removed meanwhile
        return sorted(out, key=lambda e: e[0])

    def size(self) -> int:
        return sum(e[1] for e in self.entries())

    def purge(self) -> tuple[int, int]:
        """Remove every series folder (complete or not) and every temporary one; returns (series, bytes) removed.

        Only what the cache creates is touched (folders named by a UID, hidden
        temporaries), so a ``cache_dir`` pointed at a wrong folder loses nothing else.
        """
        if not self.root.is_dir():
            return 0, 0
        series, freed = 0, 0
        for d in sorted(self.root.iterdir()):
            if d.is_symlink() or not d.is_dir() or not (_UID.match(d.name) or is_temp(d)):
                continue
            with contextlib.suppress(OSError):
                freed += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            series += (d / MARKER).is_file()
            if is_temp(d):
                shutil.rmtree(d, ignore_errors=True)
            else:
                self._discard(d)
        return series, freed

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits ``max_bytes``; returns the removed UIDs."""
        entries = self.entries()
        total = sum(e[1] for e in entries)
        removed = []
        for _, size, folder in entries:
            if total <= self.max_bytes:
                break
            if folder.name == keep:
                continue
            self._discard(folder)
            total -= size
            removed.append(folder.name)
        return removed

    def _discard(self, folder: Path) -> None:
        try:
            gone = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=self.root))
            os.replace(folder, gone / folder.name)
        except OSError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def _remove_stale(self) -> None:
        """Temporaries of retrievals and discards that a killed process left (others may be writing now: age)."""
        remove_stale_temps(self.root, older_than=STALE_S, recursive=False)
