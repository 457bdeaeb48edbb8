"""Sliding-window inference equals one full-volume pass for a fully convolutional ONNX model (real ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from audit.artifact.window import Tiling, sliding_window_candidates, sliding_window_dense, tile_starts
from audit.engines import load_engine
from audit.errors import InputError
from audit.metrics.detection import Candidates, heatmap_peaks

RF_RADIUS = 2  # two 3x3x3 convolutions: each output voxel sees 2 voxels either side


def fcn_model(path: Path, seed: int = 0) -> Path:
    """Conv3d(1->3, k3, pad 1) + ReLU + Conv3d(3->2, k3, pad 1): dynamic batch and spatial axes."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (3, 1, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 3).astype(np.float32)
    w2 = rng.normal(0, 0.5, (2, 3, 3, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 2).astype(np.float32)
    conv = dict(kernel_shape=[3, 3, 3], pads=[1, 1, 1, 1, 1, 1])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], **conv), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2", "b2"], ["y"], **conv)],
        "fcn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "z", "y", "x"])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return load_engine(fcn_model(tmp_path_factory.mktemp("window") / "fcn.onnx"), threads=1)


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(1).normal(0, 1, (21, 37, 30)).astype(np.float32)


def test_tile_starts_cover_the_axis_with_at_least_the_overlap():
    for length, tile, overlap in [(37, 16, 6), (30, 16, 8), (16, 16, 4), (10, 16, 4), (300, 64, 16)]:
        s = tile_starts(length, tile, overlap)
        assert s[0] == 0 and s[-1] == max(0, length - tile)
        assert np.all(np.diff(s) <= tile - overlap)  # consecutive tiles overlap by >= overlap
    with pytest.raises(InputError, match="overlap"):
        tile_starts(30, 8, 8)


@pytest.mark.parametrize(("blend", "batch"), [("gaussian", 3), ("linear", 1), ("constant", 4)])
def test_dense_equals_a_full_pass(engine, volume, blend, batch, tmp_path):
    full = engine.run(volume[None, None])["y"][0]
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=full.shape)
    vol = np.lib.format.open_memmap(tmp_path / "vol.npy", mode="w+", dtype=np.float32, shape=volume.shape)
    vol[...] = volume
    got = sliding_window_dense(np.load(tmp_path / "vol.npy", mmap_mode="r"), engine.run, tile=(12, 16, 16),
                               overlap=(4, 6, 8), margin=RF_RADIUS, batch=batch, blend=blend, out=out)
    assert got is out and got.dtype == np.float32 and got.shape == full.shape
    np.testing.assert_allclose(got, full, rtol=0, atol=2e-5)


def test_without_margin_tile_edges_differ_and_blending_is_a_weighted_mean(engine, volume):
    full = engine.run(volume[None, None])["y"][0]
    got = sliding_window_dense(volume, engine.run, tile=12, overlap=4, blend="gaussian")
    assert np.max(np.abs(got - full)) > 1e-3  # zero padding at interior tile edges leaks in without a margin
    # a model that is the identity on every voxel must come back exactly: the weights sum to 1 everywhere
    same = sliding_window_dense(volume, lambda x: x, tile=(12, 16, 16), overlap=(4, 6, 8), blend="gaussian")
    np.testing.assert_allclose(same[0], volume, rtol=1e-6, atol=1e-6)


def test_margin_needs_twice_its_overlap():
    with pytest.raises(InputError, match="overlap >= 2 \\* margin"):
        Tiling((40, 40, 40), 16, 3, margin=2)


def test_candidates_merge_across_tiles_to_the_full_pass_peaks(engine, volume):
    full = engine.run(volume[None, None])["y"][0, 0]
    spacing = (1.0, 1.0, 1.0)
    want = heatmap_peaks(full, threshold=0.5, neighbourhood=3, nms_radius_mm=0.5, spacing=spacing)
    decode = lambda out: heatmap_peaks(out["y"][0], threshold=0.5, nms_radius_mm=0.5, spacing=spacing)  # noqa: E731
    got = sliding_window_candidates(volume, engine.run, decode, tile=(12, 16, 16), overlap=(8, 8, 8),
                                    margin=RF_RADIUS + 1, batch=2)
    assert len(want) > 5
    key = lambda c: sorted(map(tuple, np.c_[c.centres, c.scores].round(5).tolist()))  # noqa: E731
    assert key(got) == key(want)


def test_an_axis_shorter_than_the_tile_is_padded_and_cropped():
    vol = np.random.default_rng(2).normal(0, 1, (8, 37, 30)).astype(np.float32)
    seen = []

    def identity(x):
        seen.append(x.shape)
        return {"y": x}

    got = sliding_window_dense(vol, identity, tile=(12, 16, 16), overlap=(4, 6, 8), output="y", pad_value=-5.0)
    assert all(s[2:] == (12, 16, 16) for s in seen)  # the model always sees whole tiles
    np.testing.assert_allclose(got[0], vol, rtol=1e-6, atol=1e-6)



@pytest.mark.parametrize("margin", [8, 7])
def test_every_candidate_is_kept_by_exactly_one_tile(margin):
    """A full pass reports every mark; the windowed list must equal it. Marks: a sub-voxel centre in the z seam
    (55.5, the centre of box z 50..62: between t-1-m and t-m of the first tile, lost by both tiles before), two
    real marks 3 mm apart (merged by a cross-tile NMS before), and 200 random sub-voxel marks over the volume, the
    seams of every axis included. Each must come back exactly once."""
    shape = (112, 40, 36)
    volume = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)  # a voxel's value is its flat index (exact)
    rng = np.random.default_rng(3)
    marks = np.r_[[(55.5, 8.0, 8.0, 0.9), (20.0, 8.0, 8.0, 0.8), (23.0, 8.0, 8.0, 0.7)],
                  np.c_[rng.uniform(0, np.array(shape) - 1, (200, 3)), rng.uniform(0, 1, 200)]]

    def decode(one):  # the "model": every mark inside the tile, in tile coordinates
        origin = np.array(np.unravel_index(int(one[0, 0, 0, 0]), shape), np.float64)
        rel = marks[:, :3] - origin
        inside = np.all((rel >= 0) & (rel <= np.array(one.shape[1:]) - 1), axis=1)
        return Candidates(rel[inside], marks[inside, 3])

    got = sliding_window_candidates(volume, lambda x: x, decode, tile=(64, 24, 24),
                                    overlap=(16, 2 * margin, 2 * margin), margin=margin, batch=3)
    key = lambda c: sorted(map(tuple, np.c_[c.centres, c.scores].round(6).tolist()))  # noqa: E731
    assert len(got) == len(marks)
    assert key(got) == key(Candidates(marks[:, :3], marks[:, 3]))
