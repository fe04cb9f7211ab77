"""The cuda target's checks of an exported program (``targets/cuda_checks.py``): the rows the
batch-padding check pads with, and which symbolic sizes are the batch."""

from __future__ import annotations

import torch

from ai_vmm.targets import cuda_checks


def test_rows_for_the_padding_check_are_completed_with_other_rows() -> None:
    """The rows-do-not-mix check needs rows that differ from the ones it pads with; a one-row
    example is completed with its own row mirrored (same values, other positions)."""
    one = torch.arange(6.0).reshape(1, 2, 3)
    three = cuda_checks.rows_up_to(one, 3, torch)
    assert three.shape == (3, 2, 3)
    torch.testing.assert_close(three[0], one[0])
    torch.testing.assert_close(three[1], one[0].flip(-1))
    assert not torch.equal(three[1], three[0])
    assert cuda_checks.rows_up_to(three, 2, torch).shape == (2, 2, 3)


def test_a_resized_batch_is_still_the_batch_for_padding() -> None:
    """torch.export writes a size resized by 1.0 as floor(1.0 * s): the padding check must see
    it as the batch (NudeNet's YOLOv8 upsamples by [1, 1, 2, 2]), a doubled one must not."""
    import sympy
    from torch.utils._sympy.functions import FloorToInt, ToFloat

    batch = sympy.Symbol("s34", integer=True, positive=True)
    assert cuda_checks.is_size(FloorToInt(1.0 * ToFloat(FloorToInt(1.0 * ToFloat(batch)))), "s34")
    assert cuda_checks.is_size(batch, "s34")
    assert not cuda_checks.is_size(2 * batch, "s34")
    assert not cuda_checks.is_size(batch, "s1")
