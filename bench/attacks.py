"""Our L-inf PGD against torchattacks' PGD on the same model, inputs, eps and steps: success rates and speed.

Model: a reference model (bodysite2d by default, or nodule3d; quick build) as
the user's torch module, inputs the preprocessed phantom images in [0, 1].
Both attacks maximise the cross-entropy of the clean decision (torchattacks
gets the class log-probabilities as its logits, which makes its loss -log p_y;
ours reads the logits under the softmax/sigmoid, the same loss wherever the
logit spread is below 12), with eps, step eps/5, the same number of steps and
a random start. Success: the prediction differs from the clean one (on the
torch module for both; ours also on the ONNX artifact). Ours is timed as a user
runs it (``run_attack``: preprocessing, attack, deployed re-run); each side
--repeats times, interleaved, best time kept.
Last line: one JSON object.
Usage: python bench/attacks.py [--n 32] [--steps 20] [--eps 0.01] [--model bodysite2d|nodule3d] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


class LogProbs(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        p = self.net(x)
        if p.shape[1] == 1:  # binary, P(1): the two class log-probabilities
            p = torch.cat([1 - p, p], dim=1)
        return torch.log(p.clamp_min(1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bodysite2d")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side, interleaved; the best is kept")
    args = ap.parse_args()

    import torchattacks

    from audit.attacks import PGD, Target, run_attack
    from audit.artifact import AuditedModel
    from audit.engines import load_engine
    from audit.artifact.heads import head_from, preprocess_from
    from models import registry
    from models.build import cached_build, load_checkpoint

    build = cached_build(args.model, quick=True)
    art = build.artifacts[0]
    bp = registry.get(args.model).blueprint(build.recipe.variant)
    data = bp.make_data(max(args.n, 16), build.recipe.data_seed + 1)
    hu = data.hu[: args.n].astype(np.float32)
    engine = load_engine(art.onnx)
    model = AuditedModel(args.model, engine, head_from(engine.metadata), preprocess_from(engine.metadata))
    ours_net = load_checkpoint(args.model, build.recipe.variant, art.checkpoint)
    target = Target.from_model(model, ours_net, parity_hu=hu[:4])
    ref_net = LogProbs(load_checkpoint(args.model, build.recipe.variant, art.checkpoint)).eval()

    x = torch.from_numpy(model.prepare(hu))
    with torch.no_grad():
        clean = ref_net(x).argmax(1)
    attack = PGD(target, eps=args.eps, alpha=args.eps / 5, steps=args.steps, space="input", random_start=True)
    ta = torchattacks.PGD(ref_net, eps=args.eps, alpha=args.eps / 5, steps=args.steps, random_start=True)

    def ours():
        return run_attack(attack, model, hu, seed=args.seed, batch_size=args.n, progress=False)

    def theirs():
        torch.manual_seed(args.seed)
        return ta(x, clean)

    t_ours, t_theirs = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        adv = theirs()
        t_theirs.append(time.perf_counter() - t0)
    with torch.no_grad():
        ta_success = float((ref_net(adv).argmax(1) != clean).float().mean())
        ta_linf = float((adv - x).abs().max())
    s = res.summary()
    print(f"model {args.model}, n={args.n}, eps={args.eps}, steps={args.steps}, threads={torch.get_num_threads()}")
    print(f"ours:         torch success {s['torch_success_rate']:.3f}, deployed (ONNX) success "
          f"{s['deployed_success_rate']:.3f}, max L-inf {s['max_linf']:.4g}, {min(t_ours):.2f} s")
    print(f"torchattacks: success {ta_success:.3f}, max L-inf {ta_linf:.4g}, {min(t_theirs):.2f} s")
    print(json.dumps({"model": args.model, "n": args.n, "eps": args.eps, "steps": args.steps,
                      "ours_torch_success": s["torch_success_rate"], "ours_deployed_success": s["deployed_success_rate"],
                      "torchattacks_success": ta_success, "ours_s": round(min(t_ours), 3),
                      "torchattacks_s": round(min(t_theirs), 3), "speed_ratio": round(min(t_theirs) / min(t_ours), 3)}))


if __name__ == "__main__":
    main()
