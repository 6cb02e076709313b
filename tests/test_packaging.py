"""Project metadata that installers read."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string():
    """The table form (``{ text = ... }``) is deprecated: setuptools warns about it on every install."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    # The SPDX string form needs setuptools 77 to build.
    assert any(req.replace(" ", "").startswith("setuptools>=7") and int(req.split(">=")[1].split(".")[0]) >= 77
               for req in project["build-system"]["requires"])
