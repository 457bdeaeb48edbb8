import pytest
import torch

from models.nets import NODULE_VARIANTS, BodySiteNet2D, FPRNet3D, NoduleNet3D, UNet2D
from models.nets.fpr3d import beta_loss


@pytest.mark.parametrize("variant", sorted(NODULE_VARIANTS))
def test_nodule_variants_shapes_and_ranges(variant):
    torch.manual_seed(0)
    net = NoduleNet3D(variant).eval()
    out = net(torch.rand(3, 1, 32, 32, 32))
    assert out.shape == (3, 1)
    lo, hi = (1.0, 5.0) if variant == "rating" else (0.0, 1.0)
    assert torch.all(out >= lo) and torch.all(out <= hi)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    fcs = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    expected_convs = {"deeper": 6, "shallower": 2}.get(variant, 4)
    assert len(convs) == expected_convs and len(fcs) == 4
    if variant == "batchnorm":
        assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    if variant.startswith("dropout"):
        assert {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)} == {float(variant[7:])}


def test_variant_widths_differ():
    n = {v: sum(p.numel() for p in NoduleNet3D(v).parameters()) for v in ("narrower", "default", "wider")}
    assert n["narrower"] < n["default"] < n["wider"]
    with pytest.raises(ValueError, match="variant"):
        NoduleNet3D("huge")


def test_bodysite_softmax_fpr_beta_unet_outputs():
    torch.manual_seed(0)
    p = BodySiteNet2D().eval()(torch.rand(2, 1, 256, 256))
    assert p.shape == (2, 4) and torch.allclose(p.sum(1), torch.ones(2), atol=1e-6)
    ev = FPRNet3D().eval()(torch.rand(2, 1, 32, 32, 32))
    assert ev.shape == (2, 2) and torch.all(ev >= 1.0)
    mask, contour = UNet2D().eval()(torch.rand(2, 1, 128, 128))
    assert mask.shape == (2, 1, 128, 128) and contour.shape == (2, 32, 2)
    assert torch.all(contour.abs() <= 1.0)


def test_beta_loss_prefers_evidence_for_the_true_class():
    y = torch.tensor([1, 0])
    right = torch.tensor([[20.0, 1.0], [1.0, 20.0]])
    wrong = torch.tensor([[1.0, 20.0], [20.0, 1.0]])
    flat = torch.ones(2, 2)
    assert beta_loss(right, y, 1.0) < beta_loss(flat, y, 1.0) < beta_loss(wrong, y, 1.0)
