"""Check the import-linter contracts (pyproject.toml [tool.importlinter]) on any checkout.

In the project's own venv plain `lint-imports` works (`make install` installs in setuptools'
strict editable mode, a link tree). This script checks a checkout that is not installed, e.g. a
copy in the tests: it lays the package out as installed, as a tree of symbolic links under
build/import-graph/ (runwire <- emitter/, runwire.ingest <- ingest/, ...), and runs lint-imports
with that tree first on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def link_tree(target: Path) -> Path:
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(target, ignore_errors=True)
    # Shortest names first, so runwire/ exists before runwire/ingest is linked into it.
    for package in sorted(package_dir, key=lambda name: name.count(".")):
        source = ROOT / package_dir[package]
        dest = target.joinpath(*package.split("."))
        if dest.exists():
            continue  # a folder inside an already linked package (ingest/alerts under ingest/)
        if package.count(".") == 0:
            dest.mkdir(parents=True)
            for entry in source.iterdir():  # the root package's own modules, one link each
                if entry.suffix == ".py":
                    (dest / entry.name).symlink_to(entry)
        else:
            dest.symlink_to(source, target_is_directory=True)
    return target


def main() -> int:
    tree = link_tree(ROOT / "build" / "import-graph")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.call([str(lint), "--config", str(ROOT / "pyproject.toml")], env=env, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
