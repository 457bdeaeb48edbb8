"""Reference PyTorch networks from the studies, one module each.

Every net has ``logits(x)`` (what the loss sees) and ``forward(x)`` (what is
exported: probabilities, a rating, beta evidence, or mask and contour).
"""

from models.nets.bodysite2d import BodySiteNet2D
from models.nets.fpr3d import FPRNet3D
from models.nets.nodule3d import NODULE_VARIANTS, NoduleNet3D
from models.nets.unet2d import UNet2D

__all__ = ["BodySiteNet2D", "FPRNet3D", "NODULE_VARIANTS", "NoduleNet3D", "UNet2D"]
