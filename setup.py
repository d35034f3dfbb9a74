"""One build step pyproject.toml cannot say: ship the browser demo inside the package.

``signald serve --demo`` serves ``examples/web/`` and ``clients/js/signald.js``
(``signald/app/demo.py``). They live where a reader of the repository looks for them, so the
build copies them into the wheel as ``signald/_demo/`` instead of anyone copying them by hand. A
source checkout (``./dev``, an editable install) reads them in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DEMO_SOURCES = (ROOT / "examples" / "web", ROOT / "clients" / "js" / "signald.js")


class build_py_with_demo(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "signald" / "_demo"
        target.mkdir(parents=True, exist_ok=True)
        for source in DEMO_SOURCES:
            for path in sorted(source.iterdir()) if source.is_dir() else [source]:
                if path.is_file():
                    shutil.copyfile(path, target / path.name)


setup(cmdclass={"build_py": build_py_with_demo})
