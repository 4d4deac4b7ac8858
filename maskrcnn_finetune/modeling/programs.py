"""The parts of a Mask R-CNN as ``torch.export`` programs, and the ``.pt2`` archive that holds them.

    programs = export_parts(model)                           # {part name: ExportedProgram}
    write_pt2("model.pt2", programs, python_settings(model), info)
    model, info = read_pt2("model.pt2")                      # a torchvision MaskRCNN, and its model.json

Each part of :data:`~maskrcnn_finetune.modeling.parts.PARTS` is exported with every size dynamic
but the channels (``Dim.AUTO``: the batch, the image's height and width, the number of RoIs). torch
takes a size of 0 or 1 seen while exporting as fixed; the export runs with torch's
``backed_size_oblivious`` option (the torch.export tutorial's "avoiding 0/1 specialization"), so a
program also serves a single RoI, or a 64 px image whose coarsest feature map is one pixel wide.

The ``.pt2`` file is torch's archive (``torch.export.pt2_archive``): the programs with their
weights, plus ``model.json`` and the settings of the Python part (:func:`~maskrcnn_finetune.modeling.parts.python_settings`)
as extra files, so it runs with no other file. torch's loader may unpickle what an archive holds:
load archives from sources you trust, as for any model file.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from pathlib import Path

import torch
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.export.pt2_archive import PT2ArchiveReader
from torch.export.pt2_archive._package import load_pt2, package_pt2
from torch.export.pt2_archive.constants import EXTRA_DIR

from maskrcnn_finetune.errors import ExportError, first_line
from maskrcnn_finetune.modeling.parts import PARTS, assemble, example_inputs, part_modules

PT2_FORMAT = "maskrcnn-finetune/pt2"
PT2_VERSION = 1
PT2_INFO = "model.json"
"""The extra file of the archive that holds the model folder's ``model.json``."""
PT2_KIT = "maskrcnn_finetune.json"
"""The extra file of the archive that holds the format tag, its version and the Python part's settings."""

__all__ = ["PT2_FORMAT", "PT2_VERSION", "ProgramPart", "export_parts", "export_program", "read_pt2", "read_pt2_info",
           "symbolic_sizes", "write_pt2"]


def symbolic_sizes() -> contextlib.AbstractContextManager:
    """Where torch traces a program (exporting, decomposing, converting to ONNX or OpenVINO): sizes of 0 and 1
    are not taken as fixed (torch's ``backed_size_oblivious``; see the module's text)."""
    return fx_config.patch(backed_size_oblivious=True)


def _dynamic(value):
    """``Dim.AUTO`` for every dimension of a tensor but the channels (dimension 1), in ``value``'s structure."""
    if torch.is_tensor(value):
        return {d: Dim.AUTO for d in range(value.dim()) if d != 1}
    return type(value)(_dynamic(v) for v in value)


def export_program(module: nn.Module, args: tuple) -> ExportedProgram:
    """``torch.export.export`` of ``module`` in eval mode on the example ``args`` (tensors, or lists of them), every
    size dynamic but the channels."""
    with torch.no_grad(), symbolic_sizes():
        return torch.export.export(module.eval(), tuple(args), dynamic_shapes=_dynamic(tuple(args)))


def export_parts(model: nn.Module) -> dict[str, ExportedProgram]:
    """Each part of ``model`` (a torchvision Mask R-CNN, see :func:`~maskrcnn_finetune.modeling.parts.python_settings`)
    as a program, by name."""
    inputs = example_inputs(model)
    return {name: export_program(module, inputs[name]) for name, module in part_modules(model).items()}


class ProgramPart(nn.Module):
    """A part run by its ``torch.export`` program, called as the model's own part was.

    Args:
        program: the part's program.
        out_channels: for the backbone, its FPN's channels (torchvision's ``MaskRCNN`` reads them).

    ``program`` stays at hand for converting it further (OpenVINO reads it directly).
    """

    def __init__(self, program: ExportedProgram, out_channels: int | None = None) -> None:
        super().__init__()
        self.program = program
        self.graph = program.module()
        if out_channels is not None:
            self.out_channels = out_channels
        self.training = False

    def train(self, mode: bool = True) -> "ProgramPart":
        """Inference only: eval mode is what the program already is (torch refuses ``train()`` and ``eval()``
        on a program's module, so they stop here)."""
        if mode:
            raise RuntimeError("an exported part runs inference only; train the model folder it was exported from")
        self.training = False
        return self

    def forward(self, *args):
        out = self.graph(*args)
        # a backbone's ordered dict of feature maps comes back as a dict: the order is the same
        return OrderedDict(out) if isinstance(out, dict) else out


def _key(name: str) -> str:
    """A part's name in the archive (``rpn.head`` -> ``rpn_head``)."""
    return name.replace(".", "_")


def write_pt2(path, programs: dict[str, ExportedProgram], settings: dict, info: dict) -> None:
    """Writes the archive: the ``programs`` of :data:`~maskrcnn_finetune.modeling.parts.PARTS`, ``settings``
    (the Python part's) and ``info`` (the model folder's ``model.json``)."""
    kit = {"format": PT2_FORMAT, "version": PT2_VERSION, "parts": {name: _key(name) for name in PARTS},
           "settings": settings}
    with open(path, "wb") as file:  # a file object: torch asks file names to end in .pt2, a temporary file's do not
        package_pt2(file, exported_programs={_key(name): programs[name] for name in PARTS},
                    extra_files={PT2_INFO: json.dumps(info, indent=1), PT2_KIT: json.dumps(kit, indent=1)})


def _not_ours(path, why: str) -> ExportError:
    return ExportError(f"'{path}' is not a model exported by this kit ({why}); export the model folder again "
                       "with scripts/export.py")


def read_pt2_info(path) -> dict:
    """The ``model.json`` inside an archive, without loading its programs.

    Raises:
        ExportError: the file is missing, not a ``.pt2`` archive, or not one of this kit's.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"'{path}' does not exist; export a model folder first with scripts/export.py")
    try:
        reader = PT2ArchiveReader(str(path))
        if EXTRA_DIR + PT2_INFO not in reader.get_file_names():
            raise _not_ours(path, f"a torch archive without {PT2_INFO}")
        return json.loads(reader.read_string(EXTRA_DIR + PT2_INFO))
    except (RuntimeError, AssertionError, ValueError) as exc:  # torch's zip reader and archive checks, damaged json
        raise _not_ours(path, first_line(exc)) from exc


def read_pt2(path) -> tuple[nn.Module, dict]:
    """The model of an archive written by :func:`write_pt2`: a torchvision ``MaskRCNN`` (eval mode, CPU) whose
    parts are its programs, and its ``model.json``.

    Raises:
        ExportError: the file is missing, damaged, or not one of this kit's archives.
    """
    path = Path(path)
    read_pt2_info(path)  # a missing or foreign file fails here, with its reason
    try:
        with open(path, "rb") as file:
            contents = load_pt2(file)
        kit = json.loads(contents.extra_files[PT2_KIT])
        info = json.loads(contents.extra_files[PT2_INFO])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise _not_ours(path, first_line(exc)) from exc
    if kit.get("format") != PT2_FORMAT or kit.get("version") != PT2_VERSION:
        raise _not_ours(path, f"format {kit.get('format')!r} version {kit.get('version')!r}, this kit reads "
                              f"{PT2_FORMAT} version {PT2_VERSION}")
    settings = kit["settings"]
    programs = contents.exported_programs
    missing = [name for name in PARTS if kit["parts"].get(name) not in programs]
    if missing:
        raise _not_ours(path, f"the programs of {missing} are missing")
    parts = {name: ProgramPart(programs[kit["parts"][name]], settings["out_channels"] if name == "backbone" else None)
             for name in PARTS}
    return assemble(parts, settings), info
