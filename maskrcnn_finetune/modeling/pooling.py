"""RoIAlign for CPU training, on every core.

torchvision's CPU RoIAlign runs in one thread, and its backward pass scatters each sampled point
into the feature map: in the demo recipe's training step, with bf16 convolutions, RoIAlign took a
large share of the step on two cores (and its input had to be copied out of channels-last first). Here
RoIAlign is what it is mathematically, a product with the sparse bilinear sampling matrix:
``S @ F`` forward on the channels-last features as they are, ``S^T @ dOut`` backward, both on
all cores. The sums are torchvision's, added in another order (differences of float rounding).

Training on the CPU takes this path, and inference on the CPU's fast path (``inference=True``,
in the poolers of :class:`maskrcnn_finetune.modeling.fast_cpu.FastMaskRCNN`: with many proposals an image, the
single-threaded kernel is a large share of inference); elsewhere (eval mode of a plain
model, a GPU, an adaptive sampling ratio) :class:`ParallelRoIAlign` is torchvision's
``MultiScaleRoIAlign``. Models are built with torchvision's pooler (what export and the model
folder use); the torchvision engine swaps this one in for training with :func:`use_parallel_roi_align`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def sampling_matrix(rois: Tensor, shape: tuple[int, int, int], spatial_scale: float,
                    output_size: tuple[int, int], sampling_ratio: int) -> Tensor:
    """The sparse ``(R * PH * PW, B * H * W)`` matrix of RoIAlign's bilinear sampling.

    Row ``(r, ph, pw)`` holds the weights with which output bin ``(ph, pw)`` of RoI ``r`` averages
    the feature map's pixels (``aligned=False``, a fixed ``sampling_ratio``), following
    torchvision's CPU kernel step by step: the same RoI size floor of one pixel, sample points,
    out-of-map test and border clamping.

    Args:
        rois: ``(R, 5)`` rows of batch index and x1, y1, x2, y2 in image coordinates.
        shape: ``(B, H, W)`` of the feature map.
        spatial_scale: feature-map pixels per image pixel.
        output_size: ``(PH, PW)``.
        sampling_ratio: sample points per bin and axis (> 0).
    """
    batch, height, width = shape
    pooled_h, pooled_w = output_size
    dtype, device = rois.dtype, rois.device
    x1, y1 = rois[:, 1] * spatial_scale, rois[:, 2] * spatial_scale
    roi_w = (rois[:, 3] * spatial_scale - x1).clamp(min=1.0)
    roi_h = (rois[:, 4] * spatial_scale - y1).clamp(min=1.0)
    bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
    steps = torch.arange(sampling_ratio, device=device, dtype=dtype) + 0.5

    def axis(start, bin_size, pooled, size):
        """Sample coordinates along one axis, ``(R, pooled, sampling_ratio)``, and their two neighbours."""
        index = torch.arange(pooled, device=device, dtype=dtype)
        v = (start[:, None, None] + index[None, :, None] * bin_size[:, None, None]
             + steps[None, None, :] * bin_size[:, None, None] / sampling_ratio)
        inside = (v >= -1.0) & (v <= size)
        v = v.clamp(min=0.0)
        low = v.long()
        edge = low >= size - 1
        low = torch.where(edge, torch.full_like(low, size - 1), low)
        high = torch.where(edge, low, low + 1)
        frac = torch.where(edge, torch.zeros_like(v), v - low.to(dtype))
        return low, high, 1.0 - frac, frac, inside

    y_low, y_high, hy, ly, y_in = axis(y1, bin_h, pooled_h, height)
    x_low, x_high, hx, lx, x_in = axis(x1, bin_w, pooled_w, width)

    def rows(t):  # (R, PH, s) -> (R, PH, 1, s, 1)
        return t[:, :, None, :, None]

    def cols(t):  # (R, PW, s) -> (R, 1, PW, 1, s)
        return t[:, None, :, None, :]

    weight = (rows(y_in) & cols(x_in)).to(dtype) / (sampling_ratio * sampling_ratio)
    base = (rois[:, 0].long() * (height * width))[:, None, None, None, None]
    columns = torch.stack([base + rows(y_low) * width + cols(x_low), base + rows(y_low) * width + cols(x_high),
                           base + rows(y_high) * width + cols(x_low), base + rows(y_high) * width + cols(x_high)], -1)
    values = torch.stack([rows(hy) * cols(hx), rows(hy) * cols(lx), rows(ly) * cols(hx), rows(ly) * cols(lx)], -1)
    values = values * weight[..., None]
    n_rows = rois.shape[0] * pooled_h * pooled_w
    per_row = 4 * sampling_ratio * sampling_ratio
    crow = torch.arange(0, n_rows * per_row + 1, per_row, device=device)
    return _csr(crow, columns.reshape(-1), values.reshape(-1), (n_rows, batch * height * width))


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is not
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def transposed(matrix: Tensor) -> Tensor:
    """The transpose of a CSR matrix with the same number of entries in every row, as CSR."""
    crow, col, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    n_rows, n_cols = matrix.shape
    per_row = int(crow[1] - crow[0]) if n_rows else 0
    row = torch.arange(n_rows, device=col.device).repeat_interleave(per_row)
    order = torch.argsort(col, stable=True)
    new_crow = torch.zeros(n_cols + 1, dtype=torch.long, device=col.device)
    new_crow[1:] = torch.bincount(col, minlength=n_cols).cumsum(0)
    return _csr(new_crow, row[order], values[order], (n_cols, n_rows))


class _RoIAlignSparse(torch.autograd.Function):
    """RoIAlign as a sparse product: ``out = S @ F`` forward, ``dF = S^T @ dOut`` backward, on every core."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)  # sparse products are fp32 only
    def forward(ctx, features, rois, spatial_scale, output_size, sampling_ratio):
        batch, channels, height, width = features.shape
        matrix = sampling_matrix(rois, (batch, height, width), spatial_scale, output_size, sampling_ratio)
        # (B, C, H, W) as (B * H * W, C): a view when the features are channels-last, as in training
        flat = features.permute(0, 2, 3, 1).reshape(-1, channels)
        ctx.matrix, ctx.shape = matrix, features.shape
        out = (matrix @ flat).reshape(len(rois), *output_size, channels)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_output):
        batch, channels, height, width = ctx.shape
        grad = grad_output.permute(0, 2, 3, 1).reshape(-1, channels)
        grad_features = transposed(ctx.matrix) @ grad
        return grad_features.reshape(batch, height, width, channels).permute(0, 3, 1, 2), None, None, None, None


def roi_align_parallel(features: Tensor, rois: Tensor, output_size: tuple[int, int],
                       spatial_scale: float, sampling_ratio: int) -> Tensor:
    """``torchvision.ops.roi_align(..., aligned=False)`` forward and backward on every core (fp32).

    The same sums as torchvision's kernel, added in another order: values and gradients agree to
    float rounding.
    """
    features = features.to(torch.float32, memory_format=torch.channels_last)
    return _RoIAlignSparse.apply(features, rois.float(), float(spatial_scale), tuple(output_size), int(sampling_ratio))


class ParallelRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` whose CPU training (forward and backward) runs on every core,
    and its CPU inference too when ``inference`` is set."""

    inference = False

    @classmethod
    def like(cls, pooler: MultiScaleRoIAlign, inference: bool = False) -> "ParallelRoIAlign":
        """The same pooler (feature maps, output size, sampling ratio, levels), parallel in CPU training
        (and in CPU inference with ``inference``)."""
        new = cls(pooler.featmap_names, pooler.output_size, pooler.sampling_ratio,
                  canonical_scale=pooler.canonical_scale, canonical_level=pooler.canonical_level)
        new.inference = inference
        return new

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        parallel = (self.training and torch.is_grad_enabled()) or (self.inference and not self.training)
        if not (parallel and features[0].device.type == "cpu" and self.sampling_ratio > 0):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size), dtype=torch.float32)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            result[index] = roi_align_parallel(feature, rois[index], self.output_size, scale, self.sampling_ratio)
        return result


def use_parallel_roi_align(model: torch.nn.Module, inference: bool = False) -> torch.nn.Module:
    """Swaps a torchvision Mask R-CNN's box and mask poolers for :class:`ParallelRoIAlign` (in place).

    The poolers hold no weights, so the state dict is unchanged. ``inference``: also in eval mode
    on the CPU (the fast path). Returns the model.
    """
    heads = model.roi_heads
    heads.box_roi_pool = ParallelRoIAlign.like(heads.box_roi_pool, inference)
    if heads.mask_roi_pool is not None:
        heads.mask_roi_pool = ParallelRoIAlign.like(heads.mask_roi_pool, inference)
    return model
