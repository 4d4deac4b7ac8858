"""The one-way arrows of ARCHITECTURE.md: a module imports only from its own layer or the ones below.

Every import counts, also those inside functions (a lazy import is still a dependency); imports
under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    # 0: foundations, used everywhere
    ["maskrcnn_finetune", "maskrcnn_finetune.errors", "maskrcnn_finetune.files", "maskrcnn_finetune.cli",
     "maskrcnn_finetune.structures", "maskrcnn_finetune.timing", "maskrcnn_finetune.model_spec",
     "maskrcnn_finetune.model_format", "maskrcnn_finetune.config", "maskrcnn_finetune.devices"],
    ["maskrcnn_finetune.data"],
    ["maskrcnn_finetune.modeling"],
    # the model folder, and its detectron2 side (reading and importing detectron2 checkpoints)
    ["maskrcnn_finetune.model_dir", "maskrcnn_finetune.modeling.detectron2.checkpoints"],
    ["maskrcnn_finetune.predictor", "maskrcnn_finetune.loading", "maskrcnn_finetune.evaluate", "maskrcnn_finetune.parity",
     "maskrcnn_finetune.visualize", "maskrcnn_finetune.prelabel", "maskrcnn_finetune.coco_model"],
    ["maskrcnn_finetune.engines", "maskrcnn_finetune.export", "maskrcnn_finetune.predict", "maskrcnn_finetune.compare"],
    # the programs: command lines and the notebooks' helpers
    ["maskrcnn_finetune.commands", "maskrcnn_finetune.colab", "maskrcnn_finetune.forms", "maskrcnn_finetune.handover",
     "maskrcnn_finetune.kit_source"],
    ["rest_api_flask"],
]


def _layer(module: str) -> int:
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = index, name.count(".")
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py: add it (and to ARCHITECTURE.md)"
    return best


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def test_every_import_points_down_or_sideways():
    wrong = []
    for path in sorted([*ROOT.glob("maskrcnn_finetune/**/*.py"), *ROOT.glob("rest_api_flask/**/*.py")]):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = _layer(module)
        for target, line in _imports(path):
            if target.split(".")[0] in ("maskrcnn_finetune", "rest_api_flask") and _layer(target) > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {_layer(target)} > {own})")
    assert not wrong, "\n".join(wrong)


def test_the_library_never_imports_the_server():
    for path in ROOT.glob("maskrcnn_finetune/**/*.py"):
        assert not any(t.startswith("rest_api_flask") for t, _ in _imports(path)), path
