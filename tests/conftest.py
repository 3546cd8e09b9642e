from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
TINY = f"{HERE / 'tiny_models.py'}:tiny"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One process per core (pytest -n auto): more intra-op threads would only contend.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global random state, so that models built from it (the
    CLI's file factories such as TINY) do not depend on which tests ran before in the worker."""
    torch.manual_seed(0)
