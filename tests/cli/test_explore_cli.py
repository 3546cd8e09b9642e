"""``hypercolumns explore`` on the command line (the page itself: tests/app)."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from hypercolumns.cli import app
from tests.cli.test_cli import assert_one_line_error, run


def test_explore_help_names_the_options() -> None:
    res = CliRunner().invoke(app, ["explore", "--help"])
    assert res.exit_code == 0
    for option in ("--layers", "--port", "--host", "--size"):
        assert option in res.output
    assert "--share" not in res.output


def test_explore_without_gradio_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # find_spec gives None: not installed
    code, _, err = run(["explore"], capsys)
    assert_one_line_error(code, err, "pip install 'hypercolumns[app]'")
    assert "uv sync --extra app" in err
