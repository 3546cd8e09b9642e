"""Issue 14 (K5): plain readers never see the rows of a part that was not committed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import hypercolumns as hc
from hypercolumns.io import store as st

ROOT = Path(__file__).parent.parent.parent

# writes part 0 (image a), then dies with kill -9's abruptness at the commit of part 1 (b):
# before the manifest line ("before"), or just after it ("after")
SCRIPT = """
import os, sys
from hypercolumns.io import store as st
from hypercolumns.io.store import _book
from tests.io.test_store import config, sparse

path, when = sys.argv[1], sys.argv[2]
writer = st.open_writer(path, config("sparse"), part_images=1)
writer.write(sparse("a"))
real = _book.append_line

def append_line(file, entry):
    if when == "after":
        real(file, entry)
    os._exit(9)

_book.append_line = append_line
writer.write(sparse("b", seed=1))
"""


def _keys(path: Path) -> set[str]:
    return set(pq.read_table(path).column("key").to_pylist())


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_at_the_commit_shows_plain_readers_committed_rows_only(
    tmp_path: Path, when: str
) -> None:
    path = tmp_path / "s.parquet"
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(path), when], cwd=ROOT,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 9, res.stderr
    assert _keys(path) == {"a"}  # pyarrow (and pandas) read only committed parts
    assert sorted(p.name for p in path.glob("*.parquet")) == ["part-000000.parquet"]
    committed = ["a"] if when == "before" else ["a", "b"]
    store = hc.open_store(path)
    assert list(store) == committed
    if when == "after":  # committed, not yet beside the others: the library reads it
        assert store["b"].features.shape == (6, 5)
    with st.open_writer(path, {**store.config}) as writer:  # the next run finishes the move
        assert writer.done == set(committed)
        writer.write(sparse_c())
    assert _keys(path) == {*committed, "c"}
    assert not list((path / st.BOOK / "pending").iterdir())


def sparse_c() -> st.ImageResult:
    from tests.io.test_store import sparse

    return sparse("c", seed=2)
