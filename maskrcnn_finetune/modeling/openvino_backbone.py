"""The backbone and FPN of a Mask R-CNN run by OpenVINO on the CPU (the ``openvino`` runtime).

The backbone is most of a Mask R-CNN's work and a plain convolutional graph: OpenVINO compiles
it (any image size and batch) and runs it faster than torch's CPU kernels, with the same outputs
to float rounding in f32. The rest of the model (anchors, NMS, RoIAlign, the heads, the mask
pasting) stays torch's, so the model answers exactly as before but for those roundings, and the
parity gate decides whether it is kept (:mod:`maskrcnn_finetune.loading`).

OpenVINO converts the backbone from its ``torch.export`` program (:func:`convert_program`): the
program of an exported model (``model.pt2``), or one exported here from the torch module, with
every size but the channels dynamic.

    fast = make_fast(model, backbone=compile_backbone(model.backbone, precision="f32"))  # modeling/fast_cpu.py

OpenVINO is an optional extra (``pip install openvino``); without it :func:`openvino_missing`
says so and the kit runs torch.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("f32", "bf16", "int8")
"""OpenVINO's inference precision; ``int8`` is NNCF's post-training quantisation (calibrated on images
given), the layers it leaves in float running in f32."""


_CORE = None


def openvino_core():
    """The process's one OpenVINO ``Core``, its CPU plugin loaded at the first call and kept until the process ends.

    OpenVINO's CPU plugin gives the thread that loads it an alternate signal stack of its own, and when the
    plugin is unloaded it puts back the stack it found and unmaps its own. Every ``ov.Core()`` loads a plugin
    of its own, so two runtimes freed in the order they were made (``auto`` dropping the candidate it did not
    choose) would leave the thread's alternate stack unmapped, and the next signal handled on it (Ctrl-C,
    SIGTERM, a DataLoader worker's SIGCHLD) would kill the process with a segmentation fault. With one Core
    the kit's plugin is never unloaded, and NNCF's own plugin (:func:`quantize_int8`) is loaded and
    unloaded on top of it.
    """
    global _CORE
    if _CORE is None:
        import openvino as ov

        core = ov.Core()
        core.get_property("CPU", "FULL_DEVICE_NAME")  # loads the CPU plugin now
        _CORE = core
    return _CORE


def openvino_missing(int8: bool = False) -> str | None:
    """Why the openvino runtime (``int8``: with NNCF's quantisation) cannot run here, or None when it can."""
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install openvino nncf, or the kit's openvino extra)"
    if int8 and importlib.util.find_spec("nncf") is None:
        return "NNCF is not installed (pip install nncf, or the kit's openvino extra)"
    return None


class OpenVINOPart(nn.Module):
    """``part`` (a module of tensors in, a tensor or an ordered dict of them out) compiled by OpenVINO
    for the CPU; called like it.

    Args:
        part: the module (e.g. an FPN backbone, or a box head).
        example: an input of the right rank (its batch and spatial sizes are left free).
        precision: ``"f32"``, ``"bf16"`` (OpenVINO's bf16 inference on CPUs with bf16 units), or
            ``"int8"`` (quantised by NNCF on ``calibration``).
        threads: CPU threads for OpenVINO (default: torch's).
        calibration: for int8, inputs of ``part`` (arrays of ``example``'s rank) from which NNCF
            measures the value ranges: a few of the user's own images, as the model sees them.
        model: the OpenVINO model of ``part`` made before (e.g. quantised, then written by :meth:`save`;
            the model or its IR path), run instead of quantising again.

    It runs one batch at a time (one infer request): the server and the Predictor call it from
    one thread.
    """

    def __init__(self, part: nn.Module, example: torch.Tensor, precision: str = "f32",
                 threads: int | None = None, calibration: list | None = None, model=None) -> None:
        super().__init__()
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.out_channels = getattr(part, "out_channels", None)
        part = part.eval()
        with torch.no_grad():
            converted = convert_program(ov, part, example) if model is None else None
            reference = part(example)
        if model is not None:  # converted and quantised before: an OpenVINO model, or the path of its saved IR
            converted = openvino_core().read_model(str(model)) if isinstance(model, (str, Path)) else model
        elif precision == "int8":
            converted = quantize_int8(converted, calibration)
        self.model = converted
        self.as_dict = isinstance(reference, dict)
        self.names = list(reference) if self.as_dict else ["out"]  # a dict's outputs keep its order
        config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "int8" else precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                  "INFERENCE_NUM_THREADS": str(threads or torch.get_num_threads())}
        self.compiled = openvino_core().compile_model(converted, "CPU", config)
        self._request = self.compiled.create_infer_request()

    def save(self, path) -> Path:
        """Writes the OpenVINO model it runs (converted, and quantised for int8) as IR (``path`` .xml and .bin),
        the float weights kept in f32; ``model=path`` builds it again without converting or quantising."""
        import openvino as ov

        path = Path(path)
        ov.save_model(self.model, str(path), compress_to_fp16=False)
        return path

    def forward(self, x: torch.Tensor):
        self._request.infer([x.detach().float().contiguous().numpy()])
        outputs = [torch.from_numpy(self._request.get_output_tensor(k).data.copy()) for k in range(len(self.names))]
        return OrderedDict(zip(self.names, outputs)) if self.as_dict else outputs[0]


def convert_program(ov, part: nn.Module, example: torch.Tensor):
    """``part`` converted by OpenVINO from its ``torch.export`` program: the program of an exported part
    (:class:`~maskrcnn_finetune.modeling.programs.ProgramPart`), else ``part`` exported on ``example`` with
    every size but the channels dynamic (the converted model takes any batch and image size)."""
    from maskrcnn_finetune.modeling.programs import ProgramPart, export_program, symbolic_sizes  # with the runtime

    program = part.program if isinstance(part, ProgramPart) else export_program(part, (example,))
    with symbolic_sizes():  # OpenVINO decomposes the program again: sizes 0 and 1 stay dynamic there too
        return ov.convert_model(program)


def compile_backbone(backbone: nn.Module, precision: str = "f32", threads: int | None = None,
                     calibration: list | None = None, model=None) -> OpenVINOPart:
    """An FPN backbone (``out_channels``, an ordered dict of feature maps) compiled by OpenVINO; ``model``: the
    one converted (and quantised) before, see :class:`OpenVINOPart`."""
    return OpenVINOPart(backbone, torch.zeros(1, 3, 224, 224), precision, threads, calibration, model)


def quantize_int8(converted, calibration: list, ignored_scope=None):
    """``converted`` (an OpenVINO model of the backbone) quantised to int8 by NNCF's post-training quantisation.

    Args:
        converted: the OpenVINO model.
        calibration: its inputs (arrays) from which NNCF measures the value ranges: a few of the user's
            images as the model sees them (resized by its transform, normalised).
        ignored_scope: an :class:`nncf.IgnoredScope` of layers left in float.

    Raises:
        ValueError: no calibration inputs.
    """
    import gc

    import nncf

    if not calibration:
        raise ValueError("int8 needs calibration inputs")
    openvino_core()  # the kit's CPU plugin first, so that NNCF's loads on top of it (see openvino_core)
    quantized = nncf.quantize(converted, nncf.Dataset(list(calibration)), subset_size=len(calibration),
                              preset=nncf.QuantizationPreset.MIXED, ignored_scope=ignored_scope)
    gc.collect()  # NNCF's Core and its plugin go now, before any other plugin is loaded
    return quantized
