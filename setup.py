"""Build step: generated gRPC code and bundled defaults go into every build of the package.

Everything declarative about the project is in pyproject.toml; this file only extends ``build_py``:

* ``sidecar/_proto`` is generated from ``proto/`` by tools/gen_proto.py (the one implementation);
* ``sidecar/_bundled`` receives copies of the checkout's demo flag and model repository
  (``sidecar.resources.BUNDLED_PATHS``), so that an installed sidecar's defaults exist.

A regular build (``pip install .``, ``pip wheel .``, ``python -m build``) writes both into the
build directory only, never into the checkout. An editable build (``pip install -e .``, run by
``make deps``) generates ``sidecar/_proto`` in place, because the editable install imports
``sidecar`` from the checkout; it bundles nothing, since the checkout's own files are the defaults
there. Neither directory is committed (.gitignore), and pyproject.toml keeps both out of package
discovery so that a stale copy in the checkout can never reach a wheel.
"""

from __future__ import annotations

import runpy
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))

from gen_proto import generate  # noqa: E402  (tools/ is not a package)

# Read by path: the build must not import the sidecar package (nor need its dependencies).
BUNDLED_PATHS: tuple[str, ...] = runpy.run_path(str(ROOT / "sidecar" / "resources.py"))[
    "BUNDLED_PATHS"
]
NOT_BUNDLED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def bundle(destination: Path) -> None:
    """Copy each of BUNDLED_PATHS from the checkout to ``destination``, keeping relative paths."""
    if destination.exists():
        shutil.rmtree(destination)
    for relative in BUNDLED_PATHS:
        source = ROOT / relative
        target = destination / relative
        if source.is_dir():
            shutil.copytree(source, target, ignore=NOT_BUNDLED)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        else:
            raise FileNotFoundError(f"cannot bundle {relative}: {source} does not exist")


class BuildPyWithGeneratedCode(build_py):
    """``build_py`` plus sidecar/_proto (generated) and sidecar/_bundled (copied)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            generate(ROOT / "sidecar" / "_proto")
            return
        package = Path(self.build_lib) / "sidecar"
        generate(package / "_proto")
        bundle(package / "_bundled")


setup(cmdclass={"build_py": BuildPyWithGeneratedCode})
