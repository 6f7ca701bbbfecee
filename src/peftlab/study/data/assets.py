"""Locate files inside installed asset packages without importing them (some print or fail on import)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from peftlab.study.errors import StudyError


def package_dir(package: str, pip_name: str | None = None) -> Path:
    """The folder of an installed package, found without executing its __init__."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StudyError(f"the data package {package!r} is not installed; install it with "
                         f"`pip install {pip_name or package}`")
    return Path(next(iter(spec.submodule_search_locations)))


def asset_file(package: str, relative: str, pip_name: str | None = None) -> Path:
    """A file inside an installed package, with a clear error if it is missing."""
    path = package_dir(package, pip_name) / relative
    if not path.exists():
        raise StudyError(f"expected {relative!r} inside the package {package!r} at {path}, but it is missing")
    return path
