"""A store's bookkeeping in ``_hypercolumns/``: its name and format, the configuration, the
manifest and failure logs (JSON lines flushed to disk), and what a crash leaves behind.

The writers and readers of :mod:`hypercolumns.io.store` call these helpers through the module
(``_book.fsync_tree(...)``), so that a test can replace one in a single place.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from hypercolumns.errors import StoreError

Kind = Literal["dense", "sparse"]
FORMAT = "hypercolumns-store"
FORMAT_VERSION = 1
BOOK = "_hypercolumns"
PENDING = "pending"  # folder of the book holding sparse parts until they are committed
_SUFFIXES: dict[str, Kind] = {".zarr": "dense", ".parquet": "sparse"}


def store_kind(path: str | Path) -> Kind | None:
    """``"dense"`` for a ``.zarr`` path, ``"sparse"`` for ``.parquet``, else ``None``."""
    return _SUFFIXES.get(Path(path).suffix.lower())


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a last line without its newline (a torn write) is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is empty or torn
    out = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise StoreError(
                f"{path} line {number} is not valid JSON ({err.msg}); the file was changed by "
                "something else than hypercolumns"
            ) from err
    return out


def append_line(path: Path, entry: Mapping[str, Any]) -> None:
    """Append one JSON line and flush it to disk: the line is there entirely, or not at all."""
    line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
    with path.open("ab") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def drop_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())


def read_config(path: Path) -> dict[str, Any]:
    config_file = path / BOOK / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(
            f"{str(path)!r} is not a hypercolumns store (it has no {BOOK}/config.json)"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"cannot read the configuration of store {str(path)!r}: {err}") from err
    if config.get("format") != FORMAT or config.get("kind") != store_kind(path):
        raise StoreError(
            f"{str(path)!r} is not a {store_kind(path)} hypercolumns store "
            f"(format {config.get('format')!r}, kind {config.get('kind')!r})"
        )
    return dict(config)


def differences(stored: Any, given: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(given, dict):
        out = []
        for k in list(stored) + [k for k in given if k not in stored]:
            out += differences(stored.get(k), given.get(k), f"{prefix}{k}.")
        return out
    if stored != given:
        return [f"{prefix[:-1]}: {json.dumps(stored)} in the store, {json.dumps(given)} now"]
    return []


def committed(path: Path) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Committed images (key to record, latest commit wins) and the part files commits name."""
    images: dict[str, dict[str, Any]] = {}
    parts: set[str] = set()
    for commit in read_lines(path / BOOK / "manifest.jsonl"):
        part = commit.get("part")
        if part:
            parts.add(part)
        for entry in commit.get("images", []):
            images[entry["key"]] = {**entry, "part": part} if part else entry
    return images, parts
