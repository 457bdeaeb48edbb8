"""``ManifestSource``: a CSV of ``path,label`` rows pointing at .npy or .npz files, DICOM
series folders, NIfTI or MetaImage volumes (paths relative to the CSV), or at series on a PACS
(``pacs:<SeriesUID>``, DICOMweb or DIMSE, read through ``audit.pacs``), with reference lesions for detection
audits in .npz rows (``ManifestSource.lesions``)."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from audit.data.volumes import VolumeFile, is_volume_file, read_volume_file
from audit.dicom import crop_cube, scan_series
from audit.errors import InputError
from audit.io import read_user_text
from audit.metrics.detection import Lesions
from audit.pacs import connect, parse_row

_MM_COLUMNS = ("x", "y", "z")
_VOXEL_COLUMNS = ("i", "j", "k")


class ManifestSource:
    """Rows of a CSV manifest (columns ``path``, ``label``; optional ``id``) pointing at HU images.

    A path is an .npy/.npz array, a folder holding one DICOM CT series, or a
    NIfTI (.nii, .nii.gz) or MetaImage (.mhd, .mha) CT volume
    (``audit.data.volumes``: oriented as a DICOM series, values checked as HU).
    An .npz holds the image under ``hu`` (or ``image``, or its only array) and
    may hold ``spacing``; otherwise ``spacing`` must be given. A DICOM or volume
    row gives its whole volume at its own spacing or, with lesion coordinates
    (optional columns ``x,y,z`` DICOM patient mm, or ``i,j,k`` voxel indices:
    column, row, slice of a DICOM series, the file's own indices of a volume
    file), a cube of ``cube`` voxels at ``target_spacing`` mm around the lesion
    (air outside the scan). All images share one shape.

    A path ``pacs:<SeriesUID>`` or ``pacs:<StudyUID>/<SeriesUID>`` (or ``dicomweb:...``)
    names a series on the PACS ``pacs`` (an ``audit.pacs.PacsServer`` or
    client); it is retrieved, complete, into the server's bounded cache and
    then read like a DICOM folder.

    Reference lesions (detection audits): an .npz row may hold ``lesions`` (L, 4) = (z, y, x voxel indices of the
    image, diameter in mm) and optionally ``lesions_excluded`` (L,) bool (LUNA16's irrelevant findings); such a file
    names its image ``hu`` or ``image``. Once any row holds ``lesions`` every row must (a lesion-free scan holds an
    empty (0, 4) array): a forgotten array would otherwise make a scan silently lesion-free, every mark on it a false
    positive; a row without it is one ``InputError`` naming the row and file. ``lesions`` is then one ``Lesions`` per
    row, or None when no row holds any (a detection head refuses such data). Lesions are read and checked only on
    first use of ``lesions``, which only detection code paths make (``audit.campaign.run.check_lesions``, before a
    campaign writes anything): a classification manifest whose files happen to hold an unrelated ``lesions`` array
    audits as before, and neither ``preflight`` nor ``fingerprint`` reads them (a detection campaign adds them to its
    fingerprint through ``audit.data.data_fingerprint``).
    """

    def __init__(self, manifest: str | Path, spacing: Sequence[float] | None = None, class_names: Sequence[str] = (),
                 *, cube: int = 32, target_spacing: float = 1.0, pacs=None) -> None:
        self.manifest = Path(manifest)
        self.name = str(self.manifest)
        self._lesions: list[Lesions] | None | bool = False  # False: not read yet
        self.class_names = tuple(class_names)
        if int(cube) < 1 or not float(target_spacing) > 0:
            raise InputError(f"{self.manifest}: cube must be >= 1 voxel and target_spacing > 0 mm, got {cube}, {target_spacing}")
        self.cube = int(cube)
        self.target_spacing = float(target_spacing)
        self._series: dict[Path, object] = {}
        self._volume: tuple[Path, VolumeFile] | None = None  # the last volume file read (one kept in memory)
        rows = self._rows()
        base = self.manifest.parent
        self._remote = self._pacs_rows(rows, pacs)  # row -> (study UID or None, series UID) on the PACS
        self.paths = [self._pacs.cache.folder(self._remote[n][1]) if n in self._remote else
                      (base / r["path"]).resolve() if not Path(r["path"]).is_absolute() else Path(r["path"])
                      for n, r in enumerate(rows)]
        self.centers = [self._center(n, r) for n, r in enumerate(rows)]
        self.ids = [r.get("id") or (r["path"] if c is None else f"{r['path']}@{','.join(f'{v:g}' for v in c[0])}")
                    for r, c in zip(rows, self.centers)]
        self.labels = np.array([self._label(n, r) for n, r in enumerate(rows)], np.int64)
        for n, (p, c) in enumerate(zip(self.paths, self.centers)):
            row = f"{self.manifest}: row {n + 2}"
            try:
                if n in self._remote or p.is_dir():
                    continue  # a DICOM series folder (or a PACS series), read on demand
                if c is not None and not is_volume_file(p):
                    raise InputError(f"{row}: {p}: lesion coordinates in {self.manifest.name} apply to NIfTI/MetaImage "
                                     "volumes and DICOM folders only")
                if p.suffix not in (".npy", ".npz") and not is_volume_file(p):
                    raise InputError(f"{row}: {p}: unsupported file type '{p.suffix}'; expected .npy, .npz, .nii, "
                                     ".nii.gz, .mhd, .mha or a DICOM folder")
                if not p.is_file():
                    raise InputError(f"{row}: {p}: file listed in {self.manifest.name} not found")
            except OSError as exc:  # a path too long for the filesystem, a folder we may not list
                raise InputError(f"{row}: {str(p)[:200]}: cannot use the path ({exc.strerror or exc})") from None
        try:
            first, first_spacing = self._read(0)
            first = self._numeric(0, first)
        except InputError as exc:
            raise self._at_row(0, exc) from None
        self._shape = first.shape
        if first.ndim not in (2, 3):
            raise InputError(f"{self.manifest}: row 2: {self.paths[0]}: expected a 2D slice or 3D volume, got shape "
                             f"{first.shape}")
        if first_spacing is not None:
            self._check_spacing(0, first_spacing, first.ndim)
        self._spacing_given = spacing is not None
        given = tuple(float(s) for s in spacing) if spacing is not None else first_spacing
        if given is None:
            raise InputError(f"{self.paths[0]}: no spacing in the file; set data.spacing in the config")
        if len(given) != first.ndim or not all(np.isfinite(given)) or min(given) <= 0:
            raise InputError(f"data.spacing: expected {first.ndim} positive values (mm), got {given}")
        if first_spacing is not None and self._has_geometry(0) and not np.allclose(given, first_spacing, rtol=1e-3):
            kind = "DICOM series" if self._is_dicom(0) else "volume"
            raise InputError(f"data.spacing: {given} mm disagrees with {first_spacing} mm of the {kind} {self.paths[0]}")
        self.spacing = given
        try:
            self._check(0, first, first_spacing)
        except InputError as exc:
            raise self._at_row(0, exc) from None

    def _at_row(self, i: int, exc: InputError) -> InputError:
        """``exc`` (of its own class: a ``PacsError`` stays one) with the manifest and row number in front."""
        message = f"{self.manifest}: row {i + 2}: {exc}"
        try:
            return type(exc)(message)
        except Exception:  # noqa: BLE001 - a subclass with another signature
            return InputError(message)

    def _rows(self) -> list[dict]:
        """The manifest's rows (UTF-8 CSV with a header naming ``path``), each with a usable path cell."""
        text = read_user_text(self.manifest, "manifest", bom=True)
        if "\0" in text:
            raise InputError(f"{self.manifest}: the manifest holds a NUL byte; expected a CSV text file")
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise InputError(f"{self.manifest}: not a readable CSV ({exc})") from None
        if not rows or "path" not in rows[0]:
            raise InputError(f"{self.manifest}: expected a CSV with a header naming at least 'path' (and 'label')")
        for n, r in enumerate(rows):
            if not (r.get("path") or "").strip():
                raise InputError(f"{self.manifest}: row {n + 2}: the path cell is empty")
        return rows

    def _label(self, n: int, row: dict) -> int:
        """The label of row ``n``: an integer class index >= 0, or -1 / empty for unknown."""
        value = (row.get("label") or "").strip()
        if not value:
            return -1
        try:
            label = int(value)
        except ValueError:
            raise InputError(f"{self.manifest}: row {n + 2}: label column must hold integers, got {value[:40]!r}") from None
        if not -1 <= label < 2**31:
            raise InputError(f"{self.manifest}: row {n + 2}: label {value[:40]} is not a class index (>= 0, or -1 for "
                             "unknown)")
        return label

    def _check_spacing(self, i: int, sp: tuple[float, ...], ndim: int) -> None:
        if len(sp) != ndim or not all(np.isfinite(sp)) or min(sp) <= 0:
            raise InputError(f"{self.manifest}: row {i + 2}: {self.paths[i]}: spacing {sp} is not {ndim} positive values (mm)")

    def _numeric(self, i: int, img: np.ndarray) -> np.ndarray:
        """``img`` if it holds real numbers (no strings, objects, booleans or complex values)."""
        img = np.asarray(img)
        if not np.issubdtype(img.dtype, np.number) or np.issubdtype(img.dtype, np.complexfloating):
            raise InputError(f"{self.paths[i]}: expected a real numeric array, got dtype {img.dtype}")
        return img

    def _check(self, i: int, img: np.ndarray, sp: tuple[float, ...] | None) -> None:
        """One row's image against the source: real numbers, the first image's rank and shape, finite values, and its
        spacing (DICOM: the source's; array files: their own agrees with the first file's unless data.spacing is set)."""
        self._numeric(i, img)
        if img.shape != self._shape:
            raise InputError(f"{self.paths[i]}: shape {img.shape} differs from the first image's {self._shape}")
        if sp is not None:
            self._check_spacing(i, sp, img.ndim)
            if (self._has_geometry(i) or not self._spacing_given) and not np.allclose(sp, self.spacing, rtol=1e-3):
                kind = "DICOM spacing" if self._is_dicom(i) else "volume spacing" if self._has_geometry(i) else "spacing"
                raise InputError(f"{self.paths[i]}: {kind} {sp} mm differs from the source's {self.spacing}")
        step = max(1, (1 << 22) // max(1, int(np.prod(img.shape[1:], dtype=np.int64))))  # ~4M values at a time
        for start in range(0, img.shape[0], step):
            if not np.all(np.isfinite(img[start:start + step])):
                raise InputError(f"{self.paths[i]}: image contains NaN or inf")

    def preflight(self) -> None:
        """Check every row before a campaign writes anything: readable (every DICOM slice, every array member),
        real numbers, finite, the first row's rank and shape, consistent spacing, CT modality (DICOM headers).
        One row in memory at a time; the first bad row is an ``InputError`` naming its row number and file."""
        for i in range(1, len(self)):
            try:
                img, sp = self._read(i)
                self._check(i, img, sp)
            except InputError as exc:
                raise self._at_row(i, exc) from None

    @property
    def lesions(self) -> list[Lesions] | None:
        """One ``Lesions`` per row from the .npz rows' ``lesions`` (class notes), or None when no row holds any; read
        and checked on first use (detection only). A row without ``lesions`` while another has them is refused."""
        if self._lesions is False:
            found = [self._row_lesions(i) for i in range(len(self))]
            have = [i for i, f in enumerate(found) if f is not None]
            if have and len(have) < len(found):
                i = next(j for j, f in enumerate(found) if f is None)
                raise InputError(f"{self.manifest}: row {i + 2}: {self.paths[i]}: no 'lesions' array, but row {have[0] + 2} "
                                 f"has one: every row needs it once any has (an empty (0, 4) array for a lesion-free scan)")
            self._lesions = found if have else None
        return self._lesions  # type: ignore[return-value]

    def _row_lesions(self, i: int) -> Lesions | None:
        """Row ``i``'s lesions, None where its file holds none (only .npz rows can)."""
        path = self.paths[i]
        if self._has_geometry(i) or path.suffix != ".npz":
            return None
        where = f"{self.manifest}: row {i + 2}: {path}"
        try:
            with np.load(path, allow_pickle=False) as data:
                if "lesions" not in data.files:
                    return None
                raw = np.asarray(data["lesions"])
                excluded = np.asarray(data["lesions_excluded"]) if "lesions_excluded" in data.files else None
        except Exception as exc:  # noqa: BLE001 - a truncated zip, pickled objects: the file is unusable
            raise InputError(f"{where}: cannot read the lesions ({type(exc).__name__}: {exc})") from None
        if raw.size == 0 and raw.ndim <= 2:
            raw = raw.reshape(0, 4)
        if (raw.dtype.kind not in "iuf" or raw.ndim != 2 or raw.shape[1] != 4 or not np.all(np.isfinite(raw))
                or np.any(raw[:, 3] <= 0)):
            raise InputError(f"{where}: lesions: expected a finite (L, 4) array of (z, y, x voxel, diameter mm > 0), "
                             f"got {raw.dtype} {raw.shape}")
        if excluded is not None and (excluded.dtype != bool or excluded.shape != (raw.shape[0],)):
            raise InputError(f"{where}: lesions_excluded: expected ({raw.shape[0]},) bool, got {excluded.dtype} "
                             f"{excluded.shape}")
        return Lesions.from_rows(raw, excluded)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._shape)

    def _pacs_rows(self, rows: list[dict], pacs) -> dict[int, tuple[str | None, str]]:
        """Rows naming PACS series, checked against the server now (a missing series fails before any work)."""
        remote = {}
        for n, r in enumerate(rows):
            try:
                uids = parse_row((r.get("path") or "").strip())
            except InputError as exc:
                raise InputError(f"{self.manifest}: row {n + 2}: {exc}") from None
            if uids is not None:
                remote[n] = uids
        self._pacs = None
        if remote:
            if pacs is None:
                raise InputError(f"{self.manifest}: row {min(remote) + 2} names a PACS series (pacs:...) but no "
                                 "server is configured; add a [pacs] table with url = ...")
            self._pacs = connect(pacs)
            # located once: a cached copy is used only while it holds the instance count found here
            self._refs = {n: self._pacs.locate(series, study) for n, (study, series) in remote.items()}
        return remote

    def _is_dicom(self, i: int) -> bool:
        return i in self._remote or self.paths[i].is_dir()

    def _is_volume(self, i: int) -> bool:
        """A NIfTI or MetaImage row (its own geometry, no DICOM headers)."""
        return i not in self._remote and is_volume_file(self.paths[i]) and not self.paths[i].is_dir()

    def _has_geometry(self, i: int) -> bool:
        return self._is_dicom(i) or self._is_volume(i)

    def _volume_file(self, i: int) -> VolumeFile:
        path = self.paths[i]
        if self._volume is None or self._volume[0] != path:
            self._volume = (path, read_volume_file(path))
        return self._volume[1]

    def _read_volume(self, i: int) -> tuple[np.ndarray, tuple[float, ...]]:
        vf = self._volume_file(i)
        if self.centers[i] is None:
            return vf.volume.hu, tuple(vf.volume.spacing)
        center, units = self.centers[i]
        mm = np.asarray(center, dtype=np.float64) if units == "mm" else vf.voxel_to_patient(center)
        cube = crop_cube(vf.volume, mm, self.cube, self.target_spacing, "mm")
        return cube.hu, tuple(cube.spacing)

    def _center(self, n: int, row: dict) -> tuple[tuple[float, float, float], str] | None:
        """Lesion centre of manifest row ``n`` and its units ('mm' or 'voxel'), or None."""
        if any((row.get(c) or "").strip() for c in _MM_COLUMNS) and any((row.get(c) or "").strip() for c in _VOXEL_COLUMNS):
            raise InputError(f"{self.manifest}: row {n + 2} gives both x,y,z (mm) and i,j,k (voxels); give one centre")
        for columns, units in ((_MM_COLUMNS, "mm"), (_VOXEL_COLUMNS, "voxel")):
            given = [c for c in columns if (row.get(c) or "").strip()]
            if not given:
                continue
            if len(given) != 3:
                missing = [c for c in columns if c not in given]
                raise InputError(f"{self.manifest}: row {n + 2} gives {','.join(given)} but not {','.join(missing)}")
            try:
                values = tuple(float(row[c]) for c in columns)
            except ValueError:
                raise InputError(f"{self.manifest}: row {n + 2} columns {','.join(columns)} must be numbers, "
                                 f"got {[row[c] for c in columns]}") from None
            if not all(np.isfinite(values)):
                raise InputError(f"{self.manifest}: row {n + 2} columns {','.join(columns)} must be finite, got {values}")
            return values, units  # type: ignore[return-value]
        return None

    def _series_of(self, i: int):
        """The ``SeriesHeaders`` of DICOM row ``i`` (scanned once; a PACS row is fetched into the cache first)."""
        path = self.paths[i]
        if i in self._remote:  # complete in the cache (retrieved again if it was evicted)
            study, uid = self._remote[i]
            path = self._pacs.fetch(uid, study, ref=self._refs[i])
        series = self._series.get(path)
        if series is None or not all(f.is_file() for f in series.files[:1]):
            series = self._series[path] = scan_series(path)
        return series

    def reference(self, i: int) -> Any:
        """What a derived DICOM series of sample ``i`` borrows from its source (``audit.dicom.write_series``): the
        whole source series (patient identity, geometry, frame of reference) for a whole-series row, the cube
        itself for a lesion cube (identity, the source's frame of reference and the cube's real position), None
        for array files."""
        if not self._is_dicom(i):
            return None
        series = self._series_of(i)
        if self.centers[i] is None:
            return series
        center, units = self.centers[i]
        return crop_cube(series, center, self.cube, self.target_spacing, units)  # the cube where it lies in the patient

    def source_slices(self, i: int) -> np.ndarray | None:
        """Index of the source series slice behind each slice of sample ``i`` (a cube's slices: the nearest source
        slice, clipped to the series), or None for array files."""
        if not self._is_dicom(i):
            return None
        series = self._series_of(i)
        nz = series.shape[0]
        if self.centers[i] is None:
            return np.arange(nz)
        center, units = self.centers[i]
        c = np.asarray(center, dtype=np.float64)
        kc = float(series.patient_to_index(c)[0]) if units == "mm" else float(c[2])
        k = kc + (np.arange(self.cube) - (self.cube - 1) / 2.0) * self.target_spacing / series.spacing[0]
        return np.clip(np.rint(k), 0, nz - 1).astype(np.int64)

    def acquisition(self, i: int) -> Any:
        """What the DICOM series of sample ``i`` states about its acquisition (``audit.dicom.Acquisition``), restricted
        to the sample's slices (``source_slices``): dose and tube current per slice of the sample; None for arrays."""
        slices = self.source_slices(i)
        if slices is None:
            return None
        acq = self._series_of(i).acquisition
        return None if acq is None else acq.take(slices)

    def series_name(self, i: int) -> str:
        """How messages name the series of sample ``i``: its folder (or PACS UID) and SeriesInstanceUID."""
        if not self._is_dicom(i):
            return str(self.paths[i])
        where = f"dicomweb:{self._remote[i][1]}" if i in self._remote else str(self.paths[i])
        return f"{where} (series {self._series_of(i).series_uid})"

    def context(self, i: int) -> tuple[np.ndarray, tuple[float, float], np.ndarray] | None:
        """The whole axial source slices behind a lesion cube, to measure the scan's own noise and the patient's
        size on: (HU (m, ny, nx), (dy, dx) mm, index into them of each cube slice). None for whole-series rows and
        arrays (the sample is its own context)."""
        if not self._is_dicom(i) or self.centers[i] is None:
            return None
        series = self._series_of(i)
        slices = self.source_slices(i)
        unique, inverse = np.unique(slices, return_inverse=True)
        hu = np.stack([series.read(int(k), int(k) + 1)[0] for k in unique])
        return hu, (series.spacing[1], series.spacing[2]), inverse.astype(np.int64)

    def _read_dicom(self, i: int) -> tuple[np.ndarray, tuple[float, ...]]:
        series = self._series_of(i)
        if self.centers[i] is None:
            return series.read(), tuple(series.spacing)
        center, units = self.centers[i]
        cube = crop_cube(series, center, self.cube, self.target_spacing, units)
        return cube.hu, tuple(cube.spacing)

    def _read(self, i: int) -> tuple[np.ndarray, tuple[float, ...] | None]:
        path = self.paths[i]
        if self._is_dicom(i):
            try:
                return self._read_dicom(i)
            except InputError:
                raise
            except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, IndexError) as exc:
                raise InputError(f"{path}: cannot read the DICOM series ({type(exc).__name__}: {exc})") from None
        if self._is_volume(i):
            return self._read_volume(i)
        try:
            if path.suffix == ".npy":
                return np.load(path, allow_pickle=False), None
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.keys())
                key = "hu" if "hu" in keys else "image" if "image" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise InputError(f"{path}: .npz must hold 'hu' or 'image' (or a single array), found {keys}")
                sp = tuple(float(v) for v in np.atleast_1d(data["spacing"])) if "spacing" in keys else None
                return np.asarray(data[key]), sp
        except (InputError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - a truncated zip, a bad header, pickled objects: the file is unusable
            raise InputError(f"{path}: cannot read the array ({type(exc).__name__}: {exc})") from None

    def load(self, index: Sequence[int]) -> np.ndarray:
        out = np.empty((len(index), *self._shape), dtype=np.float32)
        for j, i in enumerate(index):
            img, sp = self._read(int(i))
            self._check(int(i), img, sp)
            out[j] = img
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        dicom = False
        for n, (p, lab, c) in enumerate(zip(self.paths, self.labels, self.centers)):
            if n in self._remote:  # a PACS series: its UIDs and instance count, not the cache's file times
                dicom = True
                h.update(f"dicomweb:{self._remote[n]}|{self._refs[n].instances}|{lab}|{c}".encode())
                continue
            if p.is_dir():  # every file of the series, and the lesion centre
                dicom = True
                for f in sorted(p.iterdir()):
                    st = f.stat()
                    h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
                h.update(f"{p}|{lab}|{c}".encode())
                continue
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}|{lab}".encode())
            if self._is_volume(n):  # a MetaImage's data file, the lesion centre and the cube
                dicom = True
                for data in sorted(p.parent.glob(f"{p.stem}.*raw")):
                    st = data.stat()
                    h.update(f"{data}|{st.st_size}|{st.st_mtime_ns}".encode())
                h.update(f"|{c}".encode())
        h.update(repr(self.spacing).encode())  # lesions: not here (class notes; ``audit.data.data_fingerprint``)
        if dicom:
            h.update(repr((self.cube, self.target_spacing)).encode())
        return h.hexdigest()
