"""Dice of binary masks, batched and single, with the both-empty convention."""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import InputError
from audit.metrics import batch_dice, dice


def test_dice_hand_cases():
    # |A| = 2, |B| = 2, |A and B| = 1 -> 2 * 1 / 4 = 0.5.
    assert dice([1, 1, 0, 0], [1, 0, 1, 0]) == 0.5
    assert dice(np.ones((3, 4)), np.ones((3, 4))) == 1.0
    assert dice(np.zeros((3, 4)), np.ones((3, 4))) == 0.0
    assert dice(np.zeros((3, 4), bool), np.zeros((3, 4), bool)) == 1.0  # both empty: defined as 1


def test_batch_dice_reduces_all_but_the_first_axis():
    a = np.zeros((4, 2, 3, 3), bool)
    b = np.zeros((4, 2, 3, 3), bool)
    a[0, 0, :2, :2] = True  # 4 voxels
    b[0, 0, 1:, 1:] = True  # 4 voxels, 1 shared -> 2 / 8
    a[1] = True
    b[1] = True  # identical -> 1
    a[2, 1, 1, 1] = True  # one empty, one not -> 0
    # mask 3 empty in both -> 1
    np.testing.assert_allclose(batch_dice(a, b), [0.25, 1.0, 0.0, 1.0])
    for i in range(4):
        assert dice(a[i], b[i]) == batch_dice(a, b)[i]


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: dice([0.2, 1.0], [0, 1]), "mask_a: expected binary values"),
        (lambda: dice([0, 1], [0, 1, 1]), "mask_b: expected shape (2,) to match mask_a"),
        (lambda: batch_dice([0, 1], [0, 1]), "mask_a: expected a batch (B, ...)"),
    ],
)
def test_bad_input_names_the_argument(call, fragment):
    with pytest.raises(InputError) as info:
        call()
    assert fragment in str(info.value)
