"""pyproject.toml names a licence; the repository holds its text."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_license_file_holds_the_licence_pyproject_names():
    named = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert named == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the playground authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
