"""Explanations of flipped cases: Grad-CAM of clean vs attacked input, and the most changed first-layer maps.

Notes
-----
Study 1, section 2.4: attention maps show where the network looks before and
after the perturbation, and the first convolution's feature maps show which
low-level filters the noise excites. Grad-CAM (Selvaraju et al. 2017): with A
the activations of the last convolution and s the score of the clean decision
(P(class 1) or P(class 0) for binary, the clean class's probability for
multiclass, the output sum otherwise), weights w_c = mean over space of ds/dA_c
and the map is relu(sum_c w_c A_c), upsampled to the input grid and scaled to
[0, 1]. First-layer change per channel: mean |A_attacked - A_clean| over space.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from audit.attacks.base import AttackResult, Target
from audit.attacks.objectives import probability
from audit.report.figures import png_base64


def conv_layers(module: Any) -> list[Any]:
    import torch

    return [m for m in module.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))]


def _score(target: Target, raw: Any, label: int) -> Any:
    head = target.head
    if head.task == "binary":
        p = probability(head, raw)
        return (p if label == 1 else 1 - p).sum()
    if head.task == "multiclass":
        return probability(head, raw)[:, label].sum()
    return raw.sum()


def gradcam_and_first_layer(target: Target, x: np.ndarray, label: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(Grad-CAM map on the input grid scaled to [0, 1], first-layer activations (C, ...)) for one model input
    ``x`` (C, ...); None where the twin has no convolution."""
    import torch

    convs = conv_layers(target.twin.module)
    if not convs:
        return None, None
    acts: dict[str, Any] = {}
    hooks = [convs[-1].register_forward_hook(lambda m, i, o: acts.__setitem__("last", o)),
             convs[0].register_forward_hook(lambda m, i, o: acts.__setitem__("first", o))]
    try:
        xt = torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32)).requires_grad_(True)
        raw = target.twin(xt)[target.output_index]
        (g,) = torch.autograd.grad(_score(target, raw, label), acts["last"])
    finally:
        for h in hooks:
            h.remove()
    a = acts["last"].detach()
    spatial = tuple(range(2, a.ndim))
    cam = torch.relu((g.mean(dim=spatial, keepdim=True) * a).sum(1, keepdim=True))
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[cam.ndim]
    cam = torch.nn.functional.interpolate(cam, size=tuple(x.shape[1:]), mode=mode, align_corners=False)[0, 0].numpy()
    top = cam.max()
    cam = cam / top if top > 0 else cam
    return cam, acts["first"].detach()[0].numpy()


def _middle(a: np.ndarray) -> np.ndarray:
    """A 2D view: the array itself, or the middle slice of a 3D one."""
    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    return a


def explain_examples(target: Target, result: AttackResult, *, top: int = 3) -> list[dict[str, Any]]:
    """One explanation dict (with a PNG figure) per kept flipped example of ``result``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for index, k, x_clean, x_adv in result.examples:
        clean_label, adv_label = int(result.clean_labels[index]), int(result.adv_labels[index])
        cam_c, f_c = gradcam_and_first_layer(target, x_clean, clean_label)
        cam_a, f_a = gradcam_and_first_layer(target, x_adv, clean_label)
        change = None if f_c is None else np.abs(f_a - f_c).reshape(f_c.shape[0], -1).mean(1)
        order = [] if change is None else [int(c) for c in np.argsort(-change)[:top]]
        panels = [("clean", _middle(x_clean[0]), "gray"), ("attacked", _middle(x_adv[0]), "gray"),
                  ("attacked - clean", _middle(x_adv[0] - x_clean[0]), "coolwarm")]
        if cam_c is not None:
            panels += [("Grad-CAM clean", _middle(cam_c), "jet"), ("Grad-CAM attacked", _middle(cam_a), "jet")]
        for c in order:
            panels.append((f"conv1 ch{c} change", _middle(f_a[c] - f_c[c]), "coolwarm"))
        fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.3))
        for ax, (title, img, cmap) in zip(np.atleast_1d(axes), panels):
            ax.imshow(img, cmap=cmap)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        rec = {"index": int(index), "id": result.ids[index], "k": int(k), "clean_label": clean_label,
               "adv_label": adv_label, "first_layer_top": [{"channel": c, "mean_abs_change": float(change[c])} for c in order],
               "caption": f"{result.ids[index]}: clean vs attacked (candidate {k}), label {clean_label} -> {adv_label}",
               "png": png_base64(fig)}
        if cam_c is not None:
            rec["cam_correlation"] = float(np.corrcoef(cam_c.ravel(), cam_a.ravel())[0, 1]) if cam_c.std() > 0 and cam_a.std() > 0 else None
        out.append(rec)
    return out
