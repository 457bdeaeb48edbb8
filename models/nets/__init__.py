"""Reference PyTorch networks from the studies, one module each.

Every net has ``logits(x)`` (what the loss sees) and ``forward(x)`` (what is
exported: probabilities, a rating, beta evidence, or mask and contour); the
two-stage ``Detector3D`` trains stage by stage instead (``candidates`` then
``score_patches``) and exports candidate centres and scores.
"""

from models.nets.bodysite2d import BodySiteNet2D
from models.nets.detector3d import CandidateNet3D, Detector3D
from models.nets.fpr3d import FPRNet3D
from models.nets.nodule3d import NODULE_VARIANTS, NoduleNet3D
from models.nets.unet2d import UNet2D

__all__ = ["BodySiteNet2D", "CandidateNet3D", "Detector3D", "FPRNet3D", "NODULE_VARIANTS", "NoduleNet3D", "UNet2D"]
