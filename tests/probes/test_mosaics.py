"""The texture mosaics: seeded, every class present, masks that match the cells."""

from __future__ import annotations

import pytest
import torch

from hypercolumns.errors import OptionError
from hypercolumns.probes.mosaics import texture_mosaics


def test_mosaics_are_seeded_and_hold_every_class() -> None:
    x, m = texture_mosaics(3, (40, 56), classes=4, seed=1)
    assert x.shape == (3, 3, 40, 56)
    assert m.shape == (3, 40, 56)
    assert float(x.min()) >= 0
    assert float(x.max()) <= 1
    for i in range(3):
        assert set(m[i].unique().tolist()) == {0, 1, 2, 3}
    again = texture_mosaics(3, (40, 56), classes=4, seed=1)
    assert torch.equal(x, again[0])
    assert torch.equal(m, again[1])
    assert not torch.equal(x, texture_mosaics(3, (40, 56), classes=4, seed=2)[0])


def test_bad_arguments() -> None:
    with pytest.raises(OptionError, match=r"classes must lie in 2\.\.5"):
        texture_mosaics(1, classes=9)
    with pytest.raises(OptionError, match="n and cells"):
        texture_mosaics(0)
