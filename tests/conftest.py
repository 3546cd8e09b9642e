from __future__ import annotations

import os
from pathlib import Path

import torch

HERE = Path(__file__).parent
TINY = f"{HERE / 'tiny_models.py'}:tiny"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One process per core (pytest -n auto): more intra-op threads would only contend.
    torch.set_num_threads(1)
