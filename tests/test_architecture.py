"""The one-way arrows of ARCHITECTURE.md: a module imports only from its own layer or the ones below,
and no module imports itself back through others.

Every import counts, in every form: ``import a.b``, ``from a import b`` (the module ``a.b`` when
there is one, else the package ``a``), relative imports, and ``importlib.import_module`` /
``import_module`` / ``__import__`` with a literal name; also those inside functions (a lazy import
is still a dependency). Imports under ``if TYPE_CHECKING:`` do not count (they never run).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("maskrcnn_finetune", "rest_api_flask")

LAYERS = [
    # 0: foundations, used everywhere
    ["maskrcnn_finetune", "maskrcnn_finetune.errors", "maskrcnn_finetune.files", "maskrcnn_finetune.cli",
     "maskrcnn_finetune.structures", "maskrcnn_finetune.timing", "maskrcnn_finetune.model_spec",
     "maskrcnn_finetune.model_format", "maskrcnn_finetune.config", "maskrcnn_finetune.devices",
     "maskrcnn_finetune.registries", "maskrcnn_finetune.engine_names"],
    ["maskrcnn_finetune.data"],
    ["maskrcnn_finetune.modeling"],
    # the model folder, and its detectron2 side (reading detectron2 checkpoints, importing one as a folder)
    ["maskrcnn_finetune.model_dir", "maskrcnn_finetune.modeling.detectron2.checkpoints",
     "maskrcnn_finetune.modeling.detectron2.importing"],
    ["maskrcnn_finetune.predictor", "maskrcnn_finetune.loading", "maskrcnn_finetune.evaluate",
     "maskrcnn_finetune.parity", "maskrcnn_finetune.ap_check", "maskrcnn_finetune.runtime_cache",
     "maskrcnn_finetune.visualize", "maskrcnn_finetune.prelabel", "maskrcnn_finetune.coco_model"],
    ["maskrcnn_finetune.engines", "maskrcnn_finetune.export", "maskrcnn_finetune.predict", "maskrcnn_finetune.compare"],
    # the programs: command lines and the notebooks' helpers
    ["maskrcnn_finetune.commands", "maskrcnn_finetune.colab", "maskrcnn_finetune.forms", "maskrcnn_finetune.handover",
     "maskrcnn_finetune.kit_source"],
    ["rest_api_flask"],
]

_IMPORT_FUNCTIONS = ("import_module", "__import__")


def module_name(path: Path, root: Path = ROOT) -> str:
    """``a/b/c.py`` -> ``a.b.c``; ``a/b/__init__.py`` -> ``a.b``."""
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def kit_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the kit's packages, by name."""
    return {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).glob("**/*.py"))}


def _under_type_checking(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skip.update(id(n) for n in ast.walk(node))
            # the else branch runs
            skip.difference_update(id(n) for orelse in node.orelse for n in ast.walk(orelse))
    return skip


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _relative_base(module: str, is_package: bool, level: int) -> str:
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    return ".".join(parts[:len(parts) - (level - 1)])


def imports_of(path: Path, known: dict[str, Path] | None = None, root: Path = ROOT):
    """Yields ``(module, line)`` for every import of the file at ``path``, resolved to a module name.

    ``from pkg import name`` gives ``pkg.name`` when that is a module of ``known``, else ``pkg``;
    relative imports are made absolute; a call of ``import_module`` / ``__import__`` with a
    literal name counts (``import_module(".x", package="pkg")`` too). A call with a name that is
    not a literal yields ``("<dynamic>", line)``: its target cannot be checked.
    """
    known = kit_modules(root) if known is None else known
    own = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skip = _under_type_checking(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = _relative_base(own, is_package, node.level)
                base = f"{prefix}.{base}" if base else prefix
            for alias in node.names:
                child = f"{base}.{alias.name}"
                yield (child if child in known else base), node.lineno
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name not in _IMPORT_FUNCTIONS or not node.args:
                continue
            target = _literal(node.args[0])
            if target is None:
                yield "<dynamic>", node.lineno
                continue
            if target.startswith("."):
                package = next((_literal(k.value) for k in node.keywords if k.arg == "package"), None)
                if package is None and len(node.args) > 1:
                    package = _literal(node.args[1])
                level = len(target) - len(target.lstrip("."))
                prefix = _relative_base(f"{package}.x", False, level) if package else "<dynamic>"
                target = f"{prefix}.{target.lstrip('.')}".rstrip(".")
            yield target, node.lineno


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the kit's modules it imports (edges to other libraries left out)."""
    known = kit_modules(root)
    graph = {}
    for name, path in known.items():
        targets = set()
        for target, _ in imports_of(path, known, root):
            while target and target not in known and "." in target:  # an attribute path: its module
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the modules in import order, the first repeated at the end; None when there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        # graphlib lists the cycle against the edges (each node is imported by the one after it)
        return list(reversed(exc.args[1]))
    return None


def _layer(module: str) -> int:
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = index, name.count(".")
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py: add it (and to ARCHITECTURE.md)"
    return best


def test_every_import_points_down_or_sideways():
    known = kit_modules()
    wrong = []
    for module, path in known.items():
        own = _layer(module)
        for target, line in imports_of(path, known):
            if target.split(".")[0] in PACKAGES and _layer(target) > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {_layer(target)} > {own})")
    assert not wrong, "\n".join(wrong)


def test_every_import_names_its_module():
    """An import by a computed name would slip past both checks here."""
    dynamic = [f"{path.relative_to(ROOT)}:{line}" for path in kit_modules().values()
               for target, line in imports_of(path) if "<dynamic>" in target]
    assert not dynamic, "import_module with a name that is not a literal:\n" + "\n".join(dynamic)


def test_the_library_never_imports_the_server():
    for module, path in kit_modules().items():
        if module.startswith("maskrcnn_finetune"):
            assert not any(t.startswith("rest_api_flask") for t, _ in imports_of(path)), path


def test_no_module_imports_itself_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, "an import circle: " + " -> ".join(cycle)


def duplicate_keys(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line key`` for each key a dict literal of ``path`` repeats (Python keeps the last one silently)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Dict):
            seen = set()
            for key in node.keys:
                if isinstance(key, ast.Constant):
                    if key.value in seen:
                        found.append(f"{path.relative_to(root)}:{key.lineno} {key.value!r}")
                    seen.add(key.value)
    return found


def test_no_table_names_an_entry_twice():
    """The registries refuse a second entry (maskrcnn_finetune.registries); the tables written as dict
    literals (presets, export formats, the server's defaults, the detectron2 families...) get the same rule here."""
    twice = [hit for path in kit_modules().values() for hit in duplicate_keys(path)]
    assert not twice, "a dict literal with a key written twice (the first entry is lost):\n" + "\n".join(twice)


def test_a_key_written_twice_is_found(tmp_path):
    path = tmp_path / "presets.py"
    path.write_text("PRESETS = {\n    'demo': 1,\n    'tiny': 2,\n    'demo': 3,\n}\nOTHER = {'demo': 1}\n")
    assert duplicate_keys(path, tmp_path) == ["presets.py:4 'demo'"]


# The reader itself, on a package written for the purpose.

def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _imports_in(root: Path, name: str) -> set[str]:
    return {t for t, _ in imports_of(root / name, kit_modules(root), root)}


def test_the_reader_resolves_every_import_form(tmp_path):
    _write(tmp_path, {
        "maskrcnn_finetune/__init__.py": "",
        "maskrcnn_finetune/a.py": "",
        "maskrcnn_finetune/pkg/__init__.py": "from . import inner\nfrom .inner import thing\n",
        "maskrcnn_finetune/pkg/inner.py": "from .. import a\nfrom ..a import VALUE\n",
        "maskrcnn_finetune/b.py": (
            "import importlib\nfrom importlib import import_module\nfrom typing import TYPE_CHECKING\n"
            "import maskrcnn_finetune.a as a\n"
            "from maskrcnn_finetune import pkg, __version__\n"
            "def lazy():\n    from maskrcnn_finetune.pkg import inner\n"
            "    importlib.import_module('maskrcnn_finetune.c')\n    import_module('.d', package='maskrcnn_finetune')\n"
            "    __import__('maskrcnn_finetune.e')\n"
            "if TYPE_CHECKING:\n    import maskrcnn_finetune.hidden\nelse:\n    import maskrcnn_finetune.shown\n"),
        "rest_api_flask/__init__.py": "",
        "rest_api_flask/x.py": "name = 'y'\nimport importlib\nimportlib.import_module(name)\n",
    })
    assert _imports_in(tmp_path, "maskrcnn_finetune/pkg/__init__.py") == {"maskrcnn_finetune.pkg.inner"}
    assert _imports_in(tmp_path, "maskrcnn_finetune/pkg/inner.py") == {"maskrcnn_finetune.a"}
    assert _imports_in(tmp_path, "maskrcnn_finetune/b.py") == {
        "importlib", "typing", "maskrcnn_finetune.a", "maskrcnn_finetune.pkg", "maskrcnn_finetune",
        "maskrcnn_finetune.pkg.inner", "maskrcnn_finetune.c", "maskrcnn_finetune.d", "maskrcnn_finetune.e",
        "maskrcnn_finetune.shown"}
    assert _imports_in(tmp_path, "rest_api_flask/x.py") == {"importlib", "<dynamic>"}


def test_a_cycle_is_reported_with_its_modules_in_order(tmp_path):
    _write(tmp_path, {
        "maskrcnn_finetune/__init__.py": "",
        "maskrcnn_finetune/a.py": "from maskrcnn_finetune import b\n",
        "maskrcnn_finetune/b.py": "def f():\n    import importlib\n    importlib.import_module('maskrcnn_finetune.c')\n",
        "maskrcnn_finetune/c.py": "from .a import thing\n",
        "maskrcnn_finetune/d.py": "from . import a\n",
        "rest_api_flask/__init__.py": "",
    })
    cycle = find_cycle(import_graph(tmp_path))
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 4
    start = cycle.index("maskrcnn_finetune.a")  # the same circle, whichever module graphlib met first
    order = cycle[start:-1] + cycle[:start]
    assert order == ["maskrcnn_finetune.a", "maskrcnn_finetune.b", "maskrcnn_finetune.c"]
    _write(tmp_path, {"maskrcnn_finetune/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                "    from .a import thing\n"})
    assert find_cycle(import_graph(tmp_path)) is None


@pytest.mark.parametrize("module, layer", [("maskrcnn_finetune.predict", 5), ("maskrcnn_finetune.modeling.backbones", 2),
                                           ("maskrcnn_finetune.modeling.detectron2.checkpoints", 3)])
def test_a_module_gets_its_deepest_layer(module, layer):
    assert _layer(module) == layer
