"""Composition, not patching: no module of the packages changes an object's class under its users.

The fast path holds the model's parts (modeling/fast_cpu.py) and the export gives a copy of the
model a new transform (export/writing.py); neither assigns ``__class__``, which would change the
caller's model (or a library's object) behind its back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("maskrcnn_finetune", "rest_api_flask")


def class_assignments(source: str) -> list[int]:
    """The lines of ``source`` that assign ``x.__class__`` (``=``, ``+=``, annotated, or ``setattr``)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("setattr", "__setattr__") and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value == "__class__":
                lines.append(node.lineno)
        for target in targets:
            for part in ast.walk(target):  # also inside tuples: a, b.__class__ = ...
                if isinstance(part, ast.Attribute) and part.attr == "__class__":
                    lines.append(node.lineno)
    return lines


def test_the_scan_finds_each_form():
    source = ("model.__class__ = Fast\na, b.__class__ = 1, Fast\nsetattr(part, '__class__', Fast)\n"
              "object.__setattr__(part, '__class__', Fast)\nx: type = y.__class__\nkind = part.__class__\n")
    assert class_assignments(source) == [1, 2, 3, 4]


def test_no_module_assigns_a_class():
    found = [f"{path.relative_to(ROOT)}:{line}"
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             for line in class_assignments(path.read_text(encoding="utf-8"))]
    assert not found, "assigns __class__ (wrap or subclass instead): " + ", ".join(found)
