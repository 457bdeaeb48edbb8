"""Detection end to end (issue 18): a planted ONNX detector through a real campaign, its records read back.

The detector is a real ONNX graph run by ONNX Runtime: a voxel is a candidate when it is the maximum of its 3x3x3
neighbourhood and above a floor, its score the windowed intensity, the top M kept (NaN-free, -inf padding). The
phantoms hold Gaussian blobs at known voxels: reference lesions (one excluded) and a distractor (a false positive).
Every check recomputes what the records say independently: the clean candidates by brute-force local maxima in
NumPy, the matching and the lesion flips by brute-force distances (no ``audit.metrics.detection``), the noise from
its keys as in the segmentation test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from audit.artifact import AuditedModel, ModelEntry, open_artifact
from audit.artifact.heads import head_from
from audit.campaign import records
from audit.campaign.noise import NoiseSpec
from audit.campaign.run import RunOptions, run_campaign
from audit.config import parse_config
from audit.data import ArraySource, ManifestSource, data_fingerprint
from audit.errors import ConfigError, InputError
from audit.metrics.detection import DUPLICATE, FALSE_POSITIVE, HIT, IGNORED, Candidates, Lesions, match_candidates

SHAPE = (24, 24, 24)
SPACING = (1.5, 0.8, 0.8)  # mm (z, y, x): anisotropic, so a voxel/mm slip shows
WINDOW = (-1000.0, 1000.0)
BACKGROUND = -600.0  # HU: x = 0.2 after the window
FLOOR = 0.3  # model input units: a local maximum below it is no candidate (HU -400)
THRESHOLD = 0.5  # the deployed operating point (HU 0)
M = 32  # candidates per item (top M, -inf padding)
SIGMA_VOX = 1.5
DIAMETER_MM = 6.0
FP_RADIUS_MM = 2.5
LEVELS = (3.0, 400.0)  # mAs: sigma ~230 HU (flips) and 20 HU
K = 3

# (z, y, x, amplitude HU above background, excluded) per sample; a lesion with amplitude 300 peaks at x = 0.35: a
# candidate below the operating point (FROC sees it, a reader does not)
LESIONS = [
    [(7, 7, 7, 1100.0, False), (16, 16, 14, 700.0, False)],
    [(8, 14, 9, 300.0, False), (17, 7, 16, 1100.0, True)],
    [],
    [(12, 12, 12, 1000.0, False)],
]
DISTRACTORS = [[(6, 18, 18, 900.0)], [], [(15, 8, 8, 800.0)], []]  # blobs no lesion covers: false positives


def blob_volume(shape, blobs) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    hu = np.full(shape, BACKGROUND, np.float64)
    for z, y, x, amp in blobs:
        hu += amp * np.exp(-((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) / (2 * SIGMA_VOX ** 2))
    return hu.astype(np.float32)


def phantoms() -> tuple[np.ndarray, list[Lesions]]:
    images = np.stack([blob_volume(SHAPE, [les[:4] for les in LESIONS[i]] + DISTRACTORS[i]) for i in range(4)])
    lesions = [Lesions.of(np.array([les[:3] for les in LESIONS[i]], float).reshape(-1, 3), DIAMETER_MM / 2,
                          np.array([les[4] for les in LESIONS[i]], bool)) for i in range(4)]
    return images, lesions


def detector(path: Path, spatial=SHAPE, ood: bool = False) -> Path:
    """(B, 1, Z, Y, X) -> centres (B, M, 3) voxel (z, y, x), scores (B, M): 3x3x3 local maxima above FLOOR, top M.
    ``spatial`` fixed ints or names (dynamic axes); ``ood``: an extra output, the mean input per item."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["mp"], kernel_shape=[3, 3, 3], pads=[1] * 6),
        helper.make_node("Equal", ["x", "mp"], ["peak"]),
        helper.make_node("Greater", ["x", "floor"], ["high"]),
        helper.make_node("And", ["peak", "high"], ["keep"]),
        helper.make_node("Where", ["keep", "x", "ninf"], ["s"]),
        helper.make_node("Reshape", ["s", "flat_shape"], ["flat"]),
        helper.make_node("TopK", ["flat", "m"], ["scores", "idx"], axis=-1, largest=1, sorted=1),
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("Gather", ["shp", "i3"], ["ny"]), helper.make_node("Gather", ["shp", "i4"], ["nx"]),
        helper.make_node("Mul", ["ny", "nx"], ["nyx"]),
        helper.make_node("Div", ["idx", "nyx"], ["cz"]),
        helper.make_node("Div", ["idx", "nx"], ["q"]), helper.make_node("Mod", ["q", "ny"], ["cy"]),
        helper.make_node("Mod", ["idx", "nx"], ["cx"]),
        *[helper.make_node("Unsqueeze", [c, "last"], [c + "1"]) for c in ("cz", "cy", "cx")],
        helper.make_node("Concat", ["cz1", "cy1", "cx1"], ["ci"], axis=-1),
        helper.make_node("Cast", ["ci"], ["centres"], to=TensorProto.FLOAT),
    ]
    outputs = [helper.make_tensor_value_info("centres", TensorProto.FLOAT, ["batch", M, 3]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", M])]
    if ood:
        nodes.append(helper.make_node("ReduceMean", ["x", "axes"], ["ood"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("ood", TensorProto.FLOAT, ["batch"]))
    inits = [helper.make_tensor("floor", TensorProto.FLOAT, [], [FLOOR]),
             helper.make_tensor("ninf", TensorProto.FLOAT, [], [-np.inf]),
             helper.make_tensor("flat_shape", TensorProto.INT64, [2], [0, -1]),
             helper.make_tensor("m", TensorProto.INT64, [1], [M]),
             helper.make_tensor("i3", TensorProto.INT64, [], [3]), helper.make_tensor("i4", TensorProto.INT64, [], [4]),
             helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
             helper.make_tensor("axes", TensorProto.INT64, [4], [1, 2, 3, 4])]
    graph = helper.make_graph(nodes, "planted_detector",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, *spatial])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {"audit.task": "detection", "audit.hu_window": json.dumps(list(WINDOW)), "audit.output_kind": "candidates",
            "audit.threshold": str(THRESHOLD), "audit.outputs": json.dumps([o.name for o in outputs])}
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- brute force, independent of audit.metrics.detection --------------------------------------------------------


def brute_candidates(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of the windowed volume above FLOOR by explicit neighbour comparison: (centres, scores)."""
    x = np.clip((hu.astype(np.float32) - np.float32(WINDOW[0])) * np.float32(1 / (WINDOW[1] - WINDOW[0])), 0, 1)
    pad = np.pad(x, 1, constant_values=-np.inf)
    is_max = np.ones(x.shape, bool)
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                is_max &= x >= pad[dz : dz + x.shape[0], dy : dy + x.shape[1], dx : dx + x.shape[2]]
    idx = np.argwhere(is_max & (x > FLOOR))
    return idx.astype(float), x[is_max & (x > FLOOR)].astype(np.float64)


def brute_found(centres, scores, lesion_rows, threshold=THRESHOLD):
    """Per lesion (planted tuples): shown (score >= threshold) candidate strictly inside its radius, not excluded;
    and the shown candidates no lesion covers (false positives), as mm positions."""
    sp = np.asarray(SPACING)
    shown = scores >= threshold
    pts = centres[shown] * sp
    found, covered = [], np.zeros(len(pts), bool)
    for z, y, x, _, excl in lesion_rows:
        inside = np.sqrt((((pts - np.array([z, y, x]) * sp)) ** 2).sum(1)) < DIAMETER_MM / 2
        covered |= inside
        found.append(bool(inside.any()) and not excl)
    return np.array(found, bool), pts[~covered]


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    images, lesions = phantoms()
    model = open_artifact(ModelEntry(detector(tmp / "det.onnx", ood=True), "det"),
                          {"fp_radius_mm": FP_RADIUS_MM, "ood_output": "ood"})
    source = ArraySource(images, SPACING, lesions=lesions)
    noise = NoiseSpec(kind="nps", levels=LEVELS, draws=K, seed=7, sigma_ref=40.0, mas_ref=100.0)
    out = tmp / "out"
    run_campaign([model], source, noise, out, RunOptions(batch_size=8, shard_samples=2, progress=False))
    return model, source, noise.resolved(source), out


def test_clean_records_match_the_planted_lesions_and_distractors(audited):
    model, source, _, out = audited
    clean = records.load_clean(out, "det", len(source))
    assert clean.detection is not None and clean.ood_score is not None
    hu = source.load(range(len(source)))
    for i in range(len(source)):
        centres, scores = brute_candidates(hu[i])
        m = clean.detection.matches[i]
        # the candidates the records hold are those of brute force, best first (TopK's order)
        order = np.argsort(-scores, kind="stable")
        assert m.role.size == scores.size
        # planted truth: each blob is one candidate at its centre; lesion candidates HIT (or IGNORED when excluded)
        for j, (z, y, x, amp, excl) in enumerate(LESIONS[i]):
            at = np.flatnonzero((centres == (z, y, x)).all(1))
            assert at.size == 1
            pos = int(np.flatnonzero(order == at[0])[0])
            assert m.role[pos] == (IGNORED if excl else HIT) and m.assigned[pos] == j
            assert m.lesion_found[j] == (not excl)
            assert m.lesion_score[j] == (-np.inf if excl else pytest.approx(scores[at[0]], abs=1e-6))
        for z, y, x, _ in DISTRACTORS[i]:
            pos = int(np.flatnonzero(order == np.flatnonzero((centres == (z, y, x)).all(1))[0])[0])
            assert m.role[pos] == FALSE_POSITIVE and m.assigned[pos] == -1
        assert (m.role == FALSE_POSITIVE).sum() == len(DISTRACTORS[i])
        assert m.n_lesions == sum(not les[4] for les in LESIONS[i])
        found, _ = brute_found(centres, scores, LESIONS[i])
        assert np.array_equal(clean.detection.lesion_found[i], found)  # at the operating point: the weak one not
        assert clean.scores[i] == pytest.approx(scores.max(), abs=1e-6) and clean.labels[i] == (scores >= THRESHOLD).sum()
    assert clean.detection.lesion_found[1].tolist() == [False, False]  # weak lesion below 0.5, excluded never found
    np.testing.assert_allclose(clean.ood_score, [np.clip((h - WINDOW[0]) / 2000, 0, 1).mean() for h in hu], rtol=1e-5)


def test_level_records_reconstruct_matches_and_flips_from_the_keys(audited):
    model, source, noise, out = audited
    n = len(source)
    hu = source.load(range(n))
    clean = [brute_candidates(h) for h in hu]
    dose_model = noise.noise_model(source)
    flips = {}
    for level in LEVELS:
        rec = records.load_level(out, "det", level, noise.level_key(level), n, K)
        det = rec.detection
        assert det is not None and rec.dice is None and rec.ood_score.shape == (n, K)
        keys = np.array([noise.key(i, level, j) for i in range(n) for j in range(K)], dtype=np.uint64)
        rows = np.repeat(hu, K, axis=0)
        noisy_hu = rows + noise.sample(keys, level, rows, source.spacing, model=dose_model)
        dec = model.decide(noisy_hu, SPACING)
        for r in range(n * K):
            i, j = divmod(r, K)
            cand = dec.candidates[r]
            # the stored ScanMatch equals match_candidates on the draw's candidates, recomputed from its key
            want = match_candidates(cand, source.lesions[i], SPACING)
            got = det.matches[i][j]
            assert np.array_equal(got.role, want.role) and np.array_equal(got.assigned, want.assigned)
            np.testing.assert_allclose(got.fp_scores, want.fp_scores, atol=1e-6)
            np.testing.assert_allclose(got.lesion_score, want.lesion_score, atol=1e-6)
            assert np.array_equal(got.lesion_found, want.lesion_found) and got.n_lesions == want.n_lesions
            # lesion flips by brute force: found at the threshold versus clean, and new shown false positives
            c_found, c_fp = brute_found(*clean[i], LESIONS[i])
            n_found, n_fp = brute_found(cand.centres, cand.scores, LESIONS[i])
            new = sum(1 for p in n_fp if not any(np.sqrt(((p - q) ** 2).sum()) < FP_RADIUS_MM for q in c_fp))
            assert det.missed[i, j] == (c_found & ~n_found).sum() and det.gained[i, j] == (~c_found & n_found).sum()
            assert det.new_fp[i, j] == new
            assert np.array_equal(det.lesion_changed[i][j], c_found != n_found)
            assert rec.flipped[i, j] == bool((c_found != n_found).any() or new > 0)
            assert rec.ood_score[i, j] == pytest.approx(np.clip((noisy_hu[r] - WINDOW[0]) / 2000, 0, 1).mean(), rel=1e-4)
        assert [e.tolist() for e in det.lesion_excluded] == [[les[4] for les in LESIONS[i]] for i in range(n)]
        flips[level] = int(rec.flipped.sum())
    # the doses make the test bite: flips (lost lesions or new false positives) at the low dose, fewer at the high
    assert flips[LEVELS[0]] > 0 and flips[LEVELS[1]] < flips[LEVELS[0]]


def test_sliding_window_equals_a_full_pass(tmp_path):
    big = (40, 36, 44)
    blobs = [(5, 5, 5, 1100.0), (19, 17, 20, 900.0), (21, 30, 38, 700.0), (34, 10, 22, 1000.0), (17, 18, 31, 600.0),
             (35, 31, 8, 800.0)]  # several near the seams of the 24^3 tiles (starts 0 and 16 / 12 / 20)
    hu = blob_volume(big, blobs)[None]
    fixed = open_artifact(ModelEntry(detector(tmp_path / "fixed.onnx"), "fixed"))
    dynamic = open_artifact(ModelEntry(detector(tmp_path / "dyn.onnx", spatial=("z", "y", "x")), "dyn"))
    source = ArraySource(hu, SPACING, lesions=[Lesions.of(np.zeros((0, 3)), 1.0)])
    assert fixed.window_tile(big) == SHAPE and dynamic.window_tile(big) is None
    fixed.check_input(source)  # a detection model takes the larger volume (by sliding window)
    whole = dynamic.decide(hu, SPACING).candidates[0]
    tiled = fixed.decide(hu, SPACING).candidates[0]
    assert len(whole) == len(blobs)
    a, b = np.argsort(-whole.scores, kind="stable"), np.argsort(-tiled.scores, kind="stable")
    np.testing.assert_array_equal(tiled.centres[b], whole.centres[a])
    np.testing.assert_allclose(tiled.scores[b], whole.scores[a], atol=1e-6)
    # a classification head on the same engine keeps refusing the shape
    binary = AuditedModel("cls", fixed.engine, head_from({"audit.task": "binary"}), fixed.preprocess)
    with pytest.raises(InputError, match="expects"):
        binary.check_input(source)
    # the campaign runs the fixed model over the whole volume (clean pass and draws by sliding window)
    noise = NoiseSpec(kind="nps", levels=(400.0,), draws=1, seed=2, sigma_ref=40.0, mas_ref=100.0)
    run_campaign([fixed], source, noise, tmp_path / "out", RunOptions(batch_size=2, progress=False))
    clean = records.load_clean(tmp_path / "out", "fixed", 1).detection.matches[0]
    assert np.array_equal(np.sort(clean.fp_scores), np.sort(whole.scores).astype(np.float32))  # no lesions: all FPs


def seg_model(path: Path, spatial) -> Path:
    """Voxel-wise segmentation p = sigmoid(40 (x - 0.45)) (B, 1, Z, Y, X): foreground above HU -100."""
    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "t"], ["d"]), helper.make_node("Mul", ["d", "g"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["mask"])], "seg3d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, *spatial])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, *spatial])],
        [helper.make_tensor("t", TensorProto.FLOAT, [], [0.45]), helper.make_tensor("g", TensorProto.FLOAT, [], [40.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in {"audit.task": "segmentation", "audit.threshold": "0.5",
                       "audit.hu_window": json.dumps(list(WINDOW))}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    return path


def test_segmentation_of_a_larger_volume_by_sliding_window(tmp_path):
    big = (40, 36, 44)
    hu = blob_volume(big, [(5, 5, 5, 1100.0), (19, 17, 20, 900.0), (34, 10, 22, 1000.0)])[None]
    fixed = open_artifact(ModelEntry(seg_model(tmp_path / "f.onnx", SHAPE), "f"))
    whole = open_artifact(ModelEntry(seg_model(tmp_path / "d.onnx", ("z", "y", "x")), "d"))
    a, b = whole.decide(hu, SPACING).masks, fixed.decide(hu, SPACING).masks
    assert a.shape == b.shape == (1, *big) and 0 < a.sum() < a.size / 10
    assert np.array_equal(a, b)


def heatmap_model(path: Path, spatial) -> Path:
    """A heat-map detector with spatial context: the 3x3x3 mean of the windowed input (zero padding counted, as a
    convolution's), (B, 1, Z, Y, X); receptive radius 1 voxel, so tile edges would show without the margin."""
    graph = helper.make_graph([helper.make_node("AveragePool", ["x"], ["heat"], kernel_shape=[3, 3, 3], pads=[1] * 6,
                                                count_include_pad=1)], "heat",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, *spatial])],
                              [helper.make_tensor_value_info("heat", TensorProto.FLOAT, ["batch", 1, *spatial])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in {"audit.task": "detection", "audit.hu_window": json.dumps(list(WINDOW)),
                       "audit.output_kind": "heatmap"}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    return path


def test_heatmap_head_blends_tiles_into_one_map(tmp_path):
    big = (40, 36, 44)
    hu = blob_volume(big, [(5, 5, 5, 1100.0), (19, 17, 20, 900.0), (34, 10, 22, 1000.0)])[None]
    conf = {"peak_threshold": 0.3}  # x = 0.3: 200 HU above the background (0.2); the pooled blobs peak near 0.5
    fixed = open_artifact(ModelEntry(heatmap_model(tmp_path / "f.onnx", SHAPE), "f"), conf)
    whole = open_artifact(ModelEntry(heatmap_model(tmp_path / "d.onnx", ("z", "y", "x")), "d"), conf)
    assert fixed.head.detection_format == "heatmap" and fixed.window_tile(big) == SHAPE
    a, b = whole.decide(hu, SPACING).candidates[0], fixed.decide(hu, SPACING).candidates[0]
    assert a.centres.tolist() == [[5, 5, 5], [34, 10, 22], [19, 17, 20]] == b.centres.tolist()
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5)  # margin >= the receptive radius: the full-pass map
    with pytest.raises(InputError, match="spacing"):
        whole.decide(hu)  # heat-map NMS is in mm


def test_detection_needs_reference_lesions(tmp_path):
    images, _ = phantoms()
    model = open_artifact(ModelEntry(detector(tmp_path / "det.onnx"), "det"))
    noise = NoiseSpec(kind="nps", levels=(100.0,), draws=1, seed=1, sigma_ref=40.0, mas_ref=100.0)
    with pytest.raises(InputError, match="no reference lesions") as err:
        run_campaign([model], ArraySource(images, SPACING), noise, tmp_path / "out", RunOptions(progress=False))
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_manifest_rows_carry_lesions_and_bad_ones_are_one_line(tmp_path):
    images, _ = phantoms()
    np.savez(tmp_path / "a.npz", hu=images[0], spacing=np.array(SPACING),
             lesions=np.array([[7, 7, 7, 6.0], [16, 16, 14, 4.0]]), lesions_excluded=np.array([False, True]))
    np.savez(tmp_path / "b.npz", hu=images[2], spacing=np.array(SPACING), lesions=np.zeros((0, 4)))  # lesion-free
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], ["a.npz", ""], ["b.npz", ""]])
    src = ManifestSource(manifest)
    les = src.lesions
    assert les[0].centres.tolist() == [[7, 7, 7], [16, 16, 14]] and les[0].radii_mm.tolist() == [3.0, 2.0]
    assert les[0].excluded.tolist() == [False, True] and les[1].centres.shape == (0, 3)
    # a row without 'lesions' while another has them is refused (it would silently be lesion-free)
    np.savez(tmp_path / "b.npz", hu=images[2], spacing=np.array(SPACING))
    with pytest.raises(InputError, match=r"row 3: .*b\.npz: no 'lesions' array, but row 2 has one") as err:
        _ = ManifestSource(manifest).lesions
    assert "\n" not in str(err.value)
    np.savez(tmp_path / "b.npz", hu=images[2], spacing=np.array(SPACING), lesions=np.array([[1.0, 2.0, 3.0]]))
    bad = ManifestSource(manifest)
    bad.preflight()  # the image rows are fine; lesions are read only where a detection model needs them
    with pytest.raises(InputError, match=r"b\.npz: lesions: expected") as err:
        _ = bad.lesions
    assert "\n" not in str(err.value) and "row 3" in str(err.value)
    no_lesions = tmp_path / "none.csv"
    no_lesions.write_text("path,label\nb2.npz,\n")
    np.savez(tmp_path / "b2.npz", hu=images[2], spacing=np.array(SPACING))
    assert ManifestSource(no_lesions).lesions is None


def test_head_keys_and_fingerprints():
    binary = head_from({"audit.task": "binary"})
    assert binary.to_dict() == {"task": "binary", "class_names": ["0", "1"], "threshold": 0.5, "activation": "none",
                                "output": None, "rating_edges": [1.5, 2.5, 3.5, 4.5], "tolerance": 0.0,
                                "min_dice": 0.9}
    det = head_from({"audit.task": "detection", "audit.output_kind": "boxes", "audit.threshold": "0.3",
                     "audit.min_radius_mm": "2.0"}, {"fp_radius_mm": 4.0})
    d = det.to_dict()
    assert (d["detection_format"], d["threshold"], d["min_radius_mm"], d["fp_radius_mm"]) == ("boxes", 0.3, 2.0, 4.0)
    assert "window_overlap" not in d and "ood_output" not in d
    assert d["window_overlap_fraction"] == 0.25 and "window_overlap_fraction" not in binary.to_dict()  # default overlap
    # boxes decode to their centre voxel; padding dropped; labels = shown count, scores = best (0.0 when none)
    boxes = np.array([[[2, 2, 2, 5, 5, 5], [0, 0, 0, 1, 1, 1]], [[0, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 2]]], np.float32)
    dec = det.decide({"boxes": boxes, "scores": np.array([[0.9, 0.1], [-np.inf, np.nan]], np.float32)})
    assert dec.labels.tolist() == [1, 0] and dec.scores.tolist() == [pytest.approx(0.9), 0.0]
    assert dec.candidates[0].centres.tolist() == [[3, 3, 3], [0, 0, 0]] and len(dec.candidates[1]) == 0
    assert isinstance(dec.take(np.array([1])).candidates[0], Candidates)
    for key, value, match in [("detection_format", "points", "head.detection_format"),
                              ("min_radius_mm", -1.0, "head.min_radius_mm"), ("window_overlap", [1, 2], "head.window_overlap")]:
        with pytest.raises(ConfigError, match=match):
            head_from({"audit.task": "detection"}, {key: value})
    with pytest.raises(ConfigError, match="only for task 'detection'"):
        head_from({"audit.task": "binary"}, {"fp_radius_mm": 1.0})
    for key, value in [("detection_format", "points"), ("fp_radius_mm", -2.0), ("window_margin", [1, 2]),
                       ("window_blend", "cubic")]:
        raw = {"model": {"path": "m.onnx"}, "data": {"phantom": "nodules"},
               "noise": {"kind": "gaussian", "levels": [10.0]}, "head": {key: value}}
        with pytest.raises(ConfigError, match=f"head.{key}") as err:
            parse_config(raw, Path("."))
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="beta"):
        head_from({"audit.task": "binary"}, {"ood_output": "uncertainty"})
    beta = head_from({"audit.task": "binary", "audit.output_kind": "beta"}, {"ood_output": "uncertainty"})
    dec = beta.decide({"ab": np.array([[3.0, 1.0], [10.0, 10.0]], np.float32)})
    np.testing.assert_allclose(dec.ood, [0.5, 0.1])


def test_stored_candidates_rebuild_match_candidates_with_every_role():
    rng = np.random.default_rng(3)
    lesions = Lesions.of([[10, 10, 10], [10, 20, 20], [20, 10, 25]], [3.0, 4.0, 2.5], [False, True, False])
    seen: set[int] = set()
    for _ in range(20):  # marks around the lesions (duplicates, ignored ones) and anywhere (false positives)
        near = np.repeat(lesions.centres, 3, axis=0) + rng.normal(0, 1.5, (9, 3))
        pts = np.vstack([near, rng.uniform(0, 30, (4, 3))])
        cand = Candidates(pts, rng.uniform(0, 1, len(pts)).astype(np.float32).astype(np.float64))
        want = match_candidates(cand, lesions, SPACING)
        got = records.scan_match(cand.scores.astype(np.float32), want.role.astype(np.int8),
                                 want.assigned.astype(np.int32), lesions.n_included, 3)
        for f in ("lesion_found", "lesion_score", "assigned", "role", "fp_scores"):
            assert np.array_equal(getattr(got, f), getattr(want, f)), f
        assert got.n_lesions == want.n_lesions
        seen |= set(want.role.tolist())
    assert seen == {HIT, DUPLICATE, IGNORED, FALSE_POSITIVE}  # every role was rebuilt


def test_lesions_count_only_for_detection_campaigns(tmp_path):
    """A classification manifest whose .npz rows hold an unrelated 'lesions' array ((L, 3), not this project's
    (L, 4)) audits as before: preflight and the fingerprint do not read it, and the data fingerprint of a
    non-detection campaign does not depend on lesions. A detection campaign's does: moving one lesion by one voxel,
    or moving a lesion to another sample, changes it."""
    np.savez(tmp_path / "a.npz", hu=np.zeros((8, 8, 8), np.float32), lesions=np.array([[4.0, 4.0, 4.0]]))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.npz,1\n")
    src = ManifestSource(manifest, spacing=(1, 1, 1))
    src.preflight()
    assert data_fingerprint(src, lesions=False) == src.fingerprint()
    images, lesions = phantoms()
    plain = ArraySource(images, SPACING)
    with_les = ArraySource(images, SPACING, lesions=lesions)
    moved = [Lesions.of(les.centres + (1 if i == 0 else 0), les.radii_mm, les.excluded) for i, les in enumerate(lesions)]
    swapped = [lesions[1], lesions[0], *lesions[2:]]
    assert with_les.fingerprint() == plain.fingerprint()  # the source's own fingerprint: no lesions (as before)
    assert data_fingerprint(with_les, lesions=False) == plain.fingerprint()
    det = {data_fingerprint(ArraySource(images, SPACING, lesions=x), lesions=True) for x in (lesions, moved, swapped)}
    assert len(det) == 3 and plain.fingerprint() not in det


def test_detection_resume_rebuilds_identical_records_and_refuses_moved_lesions(tmp_path):
    """Delete a clean shard and a level shard, resume: every candidate's score, role and lesion, and the lesion
    flips, come back identical. Moving one lesion by a voxel changes the campaign: the resume is refused."""
    images, lesions = phantoms()
    model = open_artifact(ModelEntry(detector(tmp_path / "det.onnx"), "det"), {"fp_radius_mm": FP_RADIUS_MM})
    src = ArraySource(images, SPACING, lesions=lesions)
    noise = NoiseSpec(kind="nps", levels=(3.0,), draws=2, seed=7, sigma_ref=40.0, mas_ref=100.0)
    opts = RunOptions(batch_size=8, shard_samples=2, progress=False)
    out = tmp_path / "out"
    run_campaign([model], src, noise, out, opts)
    key = noise.resolved(src).level_key(3.0)

    def snap():
        return (records.load_clean(out, "det", 4).detection,
                records.load_level(out, "det", 3.0, key, 4, 2).detection)

    c0, l0 = snap()
    (out / "records" / "det" / "clean-00000002.parquet").unlink()
    next((out / "records" / "det").glob("level-*/shard-00000002.parquet")).unlink()
    run_campaign([model], src, noise, out, opts, resume=True)
    c1, l1 = snap()
    for a, b in [*zip(c0.matches, c1.matches), *zip(sum(map(list, l0.matches), []), sum(map(list, l1.matches), []))]:
        for f in ("role", "fp_scores", "lesion_score", "assigned", "lesion_found"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert np.array_equal(l0.missed, l1.missed) and np.array_equal(l0.new_fp, l1.new_fp)
    moved = [Lesions.of(les.centres + (1 if i == 0 else 0), les.radii_mm, les.excluded) for i, les in enumerate(lesions)]
    with pytest.raises(InputError, match="different campaign"):
        run_campaign([model], ArraySource(images, SPACING, lesions=moved), noise, out, opts, resume=True)


def test_heatmap_peaks_reach_below_the_operating_point_and_scores_are_decided_as_stored():
    """A heat-map head extracts peaks down to its floor (0.05), so the FROC sees a 0.3 peak, while the operating
    threshold (0.5) decides only what is shown (labels) and the flips. A candidate score is decided in float32, as the
    records store it: 0.49999999 (float64) rounds to 0.5 and is shown, in the decision and in a re-read alike."""
    heat = np.zeros((1, 1, 12, 12, 12), np.float32)
    heat[0, 0, 3, 3, 3], heat[0, 0, 8, 8, 8], heat[0, 0, 8, 2, 10] = 0.8, 0.3, 0.02
    hm = head_from({"audit.task": "detection", "audit.output_kind": "heatmap"}, {"output": "heat"})
    dec = hm.decide({"heat": heat}, spacing=(1.0, 1.0, 1.0))
    assert dec.candidates[0].scores.tolist() == [pytest.approx(0.8), pytest.approx(0.3)] and dec.labels.tolist() == [1]
    with pytest.raises(ConfigError, match=r"head.nms_radius_mm: expected a finite number > 0"):
        head_from({"audit.task": "detection"}, {"nms_radius_mm": 0.0})
    pts = head_from({"audit.task": "detection"})
    dec = pts.decide({"centres": np.zeros((1, 1, 3)), "scores": np.array([[0.49999999]])})
    assert dec.labels.tolist() == [1] and dec.candidates[0].scores[0] == np.float32(0.49999999)
