"""What the parser needs from heavy modules, read without importing them.

``raytrain --help`` and the commands that do not train must not pay for TensorFlow, Ray,
h5py, pyarrow or OpenCV: a command's description is its module's docstring, read from
the source file.
"""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_doc(name: str) -> str:
    """The docstring of raytrain's module ``name`` (``raytrain.bench.hdf5``), without importing
    it or its package (``importlib``'s ``find_spec`` would run the package's ``__init__``)."""
    path = os.path.join(PACKAGE, *name.split(".")[1:])
    path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
    with open(path, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read())) or ""
