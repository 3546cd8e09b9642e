from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
TINY = f"{HERE / 'tiny_models.py'}:tiny"
