"""The reference artifacts shipped in the package are what the code's recipe builds: a stale one fails CI."""

from __future__ import annotations

from models import cache
from models.export import read_metadata
from models.shipped import SHIPPED_RECIPES, shipped_build, shipped_recipe


def test_every_shipped_artifact_matches_the_recipe_in_the_code():
    for name in SHIPPED_RECIPES:
        build = shipped_build(name)
        want = cache.recipe_hash(shipped_recipe(name))
        assert build.recipe_hash == want, (
            f"models/artifacts/{name} was built from another version of the code; rebuild it with "
            f"'python -m models.shipped {name}' and commit the result")
        assert build.recipe == shipped_recipe(name)
        card = read_metadata(build.primary)
        assert card.recipe_hash == want and card.model == name
        assert build.metrics["models"][0]["test"]  # its test metrics travel with it


def test_shipped_onnx_is_the_file_its_metrics_describe():
    build = shipped_build("nodule3d")
    assert build.primary.stat().st_size < 2_000_000  # small enough to ship
    card = read_metadata(build.primary)
    assert card.raw["audit.weights_sha256"] == build.artifacts[0].weights_sha256
    assert build.artifacts[0].test["auc"] >= 0.85
