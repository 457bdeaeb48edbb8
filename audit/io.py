"""Output, in one place: atomic files and folders, JSON, stale-temp clean-up, progress on a terminal.

A result is either complete on disk or absent, never half-written: every file
and folder the tool writes goes through ``atomic_path`` / ``atomic_dir``
(a temporary sibling named ``.<name>.<random>.tmp``, renamed onto the target).
``remove_stale_temps`` removes what a killed run left of such writes.
This module imports nothing of the project but ``audit.errors``, so every
package (``models`` included) may use it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from audit.errors import InputError

#: Mode of output files that hold no patient data (temporary files are created 0600).
PUBLIC_FILE_MODE = 0o644
#: Mode of files and folders that may hold patient data (DICOM, PACS cache).
PRIVATE_FILE_MODE, PRIVATE_DIR_MODE = 0o600, 0o700
TEMP_SUFFIX = ".tmp"


def _temp_parent(target: Path) -> Path:
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{parent}: cannot write output there ({exc.strerror or exc})") from None
    return parent


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    On any error the temporary file is removed and ``target`` is left as it was.
    The file ends 0644, or 0600 with ``private`` (patient data). A folder that
    cannot be written raises ``InputError`` naming it.
    """
    target = Path(target)
    parent = _temp_parent(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=parent)
    except OSError as exc:
        raise InputError(f"{parent}: cannot write output there ({exc.strerror or exc})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, PRIVATE_FILE_MODE if private else PUBLIC_FILE_MODE)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, overwrite: bool = False, private: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target``.

    ``overwrite`` replaces an existing ``target`` (the old one is moved aside,
    then removed); without it an existing ``target`` is an ``InputError``.
    ``private`` makes the folder 0700 (patient data). On error nothing changes.
    """
    target = Path(target)
    parent = _temp_parent(target)
    if target.exists() and not overwrite:
        raise InputError(f"{target}: already exists; choose a new output folder (or pass overwrite=True)")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=parent))
    except OSError as exc:
        raise InputError(f"{parent}: cannot write output there ({exc.strerror or exc})") from None
    try:
        yield tmp
        os.chmod(tmp, PRIVATE_DIR_MODE if private else 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_temp(path: Path) -> bool:
    """A name ``atomic_path`` / ``atomic_dir`` gives its temporaries."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def remove_stale_temps(root: str | os.PathLike, *, older_than: float | None = None, recursive: bool = True) -> int:
    """Remove every temporary file or folder a killed write left under ``root`` (anywhere, or directly in it when
    not ``recursive``); with ``older_than`` (seconds) only those untouched that long, for folders that other
    processes may be writing into right now. Returns how many."""
    root = Path(root)
    if not root.is_dir():
        return 0
    found = root.rglob(f".*{TEMP_SUFFIX}") if recursive else root.glob(f".*{TEMP_SUFFIX}")
    now = time.time()
    stale = []
    for p in found:
        try:
            if is_temp(p) and (older_than is None or now - p.stat().st_mtime > older_than):
                stale.append(p)
        except OSError:
            continue  # removed meanwhile
    for p in sorted(stale, key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(stale)


def read_user_text(path: str | os.PathLike, what: str, *, bom: bool = False) -> str:
    """A user's text file (UTF-8; ``bom``: a leading byte-order mark is dropped, as spreadsheets write CSV), or one
    ``InputError`` naming the file and saying what it was meant to be."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8-sig" if bom else "utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the {what} is not UTF-8 text (byte {exc.start})") from None


def plain(value: Any) -> Any:
    """NumPy scalars and arrays, tuples and dicts to JSON types; NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(path: str | os.PathLike, obj: Any, *, private: bool = False) -> None:
    """``obj`` as indented JSON (NaN as null), written atomically."""
    with atomic_path(path, private=private) as tmp:
        tmp.write_text(json.dumps(plain(obj), indent=1, allow_nan=False), encoding="utf-8")


def write_text(path: str | os.PathLike, text: str, *, private: bool = False) -> None:
    """A text file (UTF-8), written atomically."""
    with atomic_path(path, private=private) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_private(path: str | os.PathLike) -> bool:
    """True when neither group nor others may read ``path``."""
    return not (os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def progress_enabled(enabled: bool | None = None) -> bool:
    """The rule for progress bars: ``None`` means on a terminal only, never under CI."""
    if enabled is None:
        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(enabled)


def progress_bar(total: int, enabled: bool | None, desc: str, unit: str = "img"):
    """A tqdm bar with rate and ETA where ``progress_enabled(enabled)``, else a silent one."""
    from tqdm import tqdm

    return tqdm(total=total, disable=not progress_enabled(enabled), desc=desc, unit=unit, smoothing=0.1, dynamic_ncols=True)
