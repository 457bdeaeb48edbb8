"""Synthetic CT phantoms in HU, deterministic from a seed: the data the reference models train on.

Nothing is downloaded: every data set is generated. Sample ``i`` of a set depends
only on ``(seed, i)``, so a larger set extends a smaller one with the same seed.
"""

from models.phantoms.bodysite import BODYSITE_CLASSES, BodySiteSet, bodysite_slices, phantom_slice
from models.phantoms.disks import DiskSet, disk_slices
from models.phantoms.nodules import NoduleSet, fpr_candidates, nodule_cubes
from models.phantoms.scanner import PhantomScanner, ScanSet

__all__ = [
    "BODYSITE_CLASSES", "BodySiteSet", "DiskSet", "NoduleSet", "PhantomScanner", "ScanSet",
    "bodysite_slices", "disk_slices", "fpr_candidates", "nodule_cubes", "phantom_slice",
]
