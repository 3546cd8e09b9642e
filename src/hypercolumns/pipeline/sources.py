"""Where a run's images come from: files, folders, glob patterns and lists, each image a
:class:`Source` with its key in the store.

This is the one definition of what an image file is (:data:`IMAGE_SUFFIXES`,
:func:`is_image_file`, :func:`image_files`).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hypercolumns.errors import HypercolumnsError, StoreError
from hypercolumns.io.store import check_key, folders_of, nesting

__all__ = ["IMAGE_SUFFIXES", "Source", "expand_inputs", "image_files", "is_image_file"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k"})  # fmt: skip


@dataclass(frozen=True)
class Source:
    """One input image.

    Attributes:
        key: Its key in the store: the path relative to the folder, glob base or list file it
            came from (``cats/001.jpg``), or the file name of an image given directly.
        path: The image file.
        mask: An integer label image of the same size, from a list file's ``mask`` column.
        error: Why this input cannot be read at all (a folder that cannot be listed); it is
            recorded as a failed input instead of being computed.
    """

    key: str
    path: Path
    mask: Path | None = None
    error: str | None = None


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` names an image file: its extension (any case) is one of
    :data:`IMAGE_SUFFIXES`. The file is not opened."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_files(
    folder: str | Path, *, recursive: bool = True, unreadable: list[Path] | None = None
) -> list[Path]:
    """The image files in ``folder`` (see :func:`is_image_file`), hidden files and folders
    skipped, sorted by name; with ``recursive``, a folder's own files come before those of its
    subfolders. Symbolic links to folders are not followed. Subfolders that cannot be listed
    are appended to ``unreadable`` when it is given."""
    return [p for p, _ in _walk(Path(folder), recursive=recursive, unreadable=unreadable)]


def _walk(
    top: Path,
    *,
    recursive: bool = True,
    follow: bool = False,
    unreadable: list[Path] | None = None,
    pattern: re.Pattern[str] | None = None,
) -> list[tuple[Path, str]]:
    """``(path, key)`` of the image files under ``top`` (key: the path relative to it), hidden
    names skipped. ``follow``: enter symbolic links to folders too, each real folder once
    (symlink loops end). ``pattern``: keep only keys it matches."""
    found: list[tuple[Path, str]] = []
    seen: set[tuple[int, int]] = set()

    def failed(err: OSError) -> None:
        if unreadable is not None and err.filename is not None:
            unreadable.append(Path(err.filename))

    for root, dirs, files in os.walk(top, onerror=failed, followlinks=follow):
        if follow:
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            if name.startswith(".") or not is_image_file(name):
                continue
            path = Path(root) / name
            key = path.relative_to(top).as_posix()
            if pattern is None or pattern.fullmatch(key):
                found.append((path, key))
    return found


def _pattern_regex(rest: str) -> re.Pattern[str]:
    """The glob ``rest`` (``*``, ``?``, ``[...]``, and ``**`` for any folders) as a regex over
    ``/``-separated relative paths."""
    out, i = [], 0
    while i < len(rest):
        if rest.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif rest.startswith("**", i):
            out.append(".*")
            i += 2
        elif rest[i] == "*":
            out.append("[^/]*")
            i += 1
        elif rest[i] == "?":
            out.append("[^/]")
            i += 1
        elif rest[i] == "[" and "]" in rest[i + 2 :]:
            end = rest.index("]", i + 2)
            body = rest[i + 1 : end]
            negate = body.startswith("!")
            out.append("[" + ("^" if negate else "") + re.escape(body.removeprefix("!")) + "]")
            i = end + 1
        else:
            out.append(re.escape(rest[i]))
            i += 1
    return re.compile("".join(out))


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = list(parts[: next(i for i, p in enumerate(parts) if _is_pattern(p))])
    return Path(*fixed) if fixed else Path()


def _list_key(written: str, path: Path, base: Path) -> str:
    rel = os.path.normpath(written).replace(os.sep, "/")
    if Path(written).is_absolute() or rel.split("/")[0] == "..":
        try:
            rel = path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            rel = "/".join(path.resolve().parts[1:])
    return rel


def _read_list(listing: Path) -> list[tuple[Path, str, Path | None]]:
    base = listing.parent
    entries: list[tuple[str, str | None]] = []
    try:
        with listing.open(newline="", encoding="utf-8") as fh:
            if listing.suffix.lower() == ".csv":
                reader = csv.DictReader(fh)
                columns = {c.strip().lower(): c for c in reader.fieldnames or []}
                if "path" not in columns:
                    raise HypercolumnsError(
                        f"{str(listing)!r} needs a header row with a 'path' column (and "
                        f"optionally 'mask'); its columns are {list(reader.fieldnames or [])}"
                    )
                for row in reader:
                    path = (row.get(columns["path"]) or "").strip()
                    mask = (row.get(columns["mask"]) or "").strip() if "mask" in columns else ""
                    if path:
                        entries.append((path, mask or None))
            else:
                for line in fh:
                    text = line.strip()
                    if text and not text.startswith("#"):
                        entries.append((text, None))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise HypercolumnsError(f"cannot read the list of images {str(listing)!r}: {err}") from err
    out = []
    for written, mask in entries:
        path = base / written
        out.append((path, _list_key(written, path, base), None if mask is None else base / mask))
    return out


def expand_inputs(inputs: Iterable[str | Path], *, check_keys: bool = True) -> list[Source]:
    """The images named by ``inputs``, each with its key.

    Each input is an image file; a folder (searched recursively for image extensions, hidden
    files skipped); a glob pattern (``"data/**/*.png"``); or a ``.txt`` list (one path per line,
    ``#`` comments) or ``.csv`` list (a header with ``path`` and optionally ``mask``, the label
    image that stratifies sparse points). Paths in lists are relative to the list's folder.
    An image named twice is kept once. ``check_keys=False`` skips the checks of keys (for
    outputs that do not use them).

    Raises:
        HypercolumnsError: An input does not exist or matches nothing, or two images would get
            the same key.
    """
    sources: list[Source] = []
    keys: dict[str, Path] = {}
    folders: set[str] = set()
    seen: set[Path] = set()
    for item in inputs:
        text = str(item)
        path = Path(text)
        found: list[tuple[Path, str, Path | None]]
        unreadable: list[Path] = []
        if path.is_dir():
            found = [(p, key, None) for p, key in _walk(path, unreadable=unreadable)]
            what = f"folder {text!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        elif path.is_file() and path.suffix.lower() in (".txt", ".csv"):
            found = _read_list(path)
            what = f"list {text!r} names no images"
        elif path.is_file():
            found = [(path, path.name, None)]
            what = ""
        elif _is_pattern(text):
            base = _glob_base(text)
            rest = Path(text).relative_to(base).as_posix()
            regex = _pattern_regex(rest)
            found = [
                (p, key, None)
                for p, key in _walk(base, follow=True, unreadable=unreadable, pattern=regex)
            ]
            what = f"pattern {text!r} matches no image files"
        else:
            raise HypercolumnsError(
                f"input {text!r} does not exist (give image files, folders, glob patterns or "
                ".txt/.csv lists of paths)"
            )
        for folder in unreadable:
            top = _glob_base(text) if _is_pattern(text) else path
            key = folder.relative_to(top).as_posix()
            reason = f"folder {str(folder)!r} cannot be listed, so its images are left out"
            sources.append(Source(key, folder, error=reason))
        if not found and not unreadable:
            raise HypercolumnsError(what)
        for p, key, mask in found:
            real = Path(os.path.realpath(p))  # never raises, even on a symlink loop
            if real in seen:
                continue
            seen.add(real)
            sources.append(Source(key, p, mask))
            if not check_keys:
                continue
            try:
                check_key(key)
            except StoreError as err:
                raise HypercolumnsError(f"image {str(p)!r}: {err}") from None
            if key in keys:
                raise HypercolumnsError(
                    f"two images get the key {key!r}: {str(keys[key])!r} and {str(p)!r} (keys "
                    "are paths relative to the folder, pattern or list they come from); pass "
                    "their common folder instead, or rename one"
                )
            other = nesting(key, set(keys), folders)
            if other is not None:
                raise HypercolumnsError(
                    f"the images {str(keys[other])!r} and {str(p)!r} get the keys {other!r} and "
                    f"{key!r}, one a folder of the other, which a store cannot hold (keys are "
                    "paths relative to the folder, pattern or list they come from); rename one"
                )
            keys[key] = p
            folders.update(folders_of(key))
    if not sources:
        raise HypercolumnsError("no input images given")
    return sources
