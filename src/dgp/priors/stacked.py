"""B generators of one architecture in one forward pass, each image with its own weights where they differ.

The batched reconstruction engine tunes a copy of the generator per image. :func:`stacked_generator_forward`
runs B such copies at once (with a :class:`StackedLayout` made once per batch): a tensor given in ``tensors``
carries a leading image dimension ``B`` (image ``i`` uses slice ``i``), every other tensor is the generator's
own and is shared by all images. Layers with per-image weights run as grouped convolutions and batched matrix
products; layers whose weights are shared (typically the untuned output layer) run as ordinary batched layers.
Image ``i`` gets the values of ``G(z[i:i+1], G.shared(class_ids[i:i+1]))`` with its weights, up to float
rounding.

This is written out per layer type, instead of mapping the single-image forward over the batch
(``torch.func.vmap``), because it leaves out the copies and layout changes that mapping adds, and runs the
stride-2 transposed convolution per image forward (faster on a CPU than its grouped form) and grouped backward.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from dgp.priors.biggan import Generator
from dgp.priors.layers import (
    GROUPED_SPECTRAL_NORM_MAX_NUMEL,
    Attention,
    BatchNorm,
    ConditionalBatchNorm,
    FrozenInstanceNorm,
    GBlock,
    SNConv2d,
    SNLinear,
    SpectralNorm,
    add_upsampled_2x,
    channel_affine,
    eval_inverse_sigma,
    upsample_nearest_2x,
)


# B copies of a weight are normalised together with the other layers of its shape (one stacked copy of them
# all, one batched power iteration) up to this many elements in all, layer by layer beyond. With every small
# weight of the prior normalised layer by layer instead, a step was 2.7% slower for a group of 8 images and
# 1.9% faster for 16 and 1.5% for 32 (one thread); with this limit 64 images through the engine stepped 1.043x
# faster than with sharing at any size (in-process alternating rounds, medians)
STACKED_GROUPED_SPECTRAL_NORM_MAX_NUMEL = 1 << 17

# Groups of at least this many images normalise their per-image weights in autograd functions of their own
# (:class:`_NormalizedConv`, :class:`_NormalizedLinear`, :class:`_UpsampledConv` with ``u``), which write the
# gradient through 1/sigma straight into the weights'; smaller groups in ordinary operators. The functions run
# Python forward and backward, at which the groups of a batch (threads of one process) take turns. Through the
# engine, against ordinary operators everywhere (alternating rounds, docs/speed-notes.md, session 25): with the
# functions for every group, 64 images (two groups of 32) stepped 1.058x faster but 16 (two groups of 8) 0.976x
# and 8 0.958x; with this limit 64 images 1.076x, 32 images 1.038x, 16 images 0.992x and 8 images 0.999x
FUSED_SPECTRAL_NORM_MIN_BATCH = 16


class _Weights:
    """Looks up the tensors of one stacked forward pass by their state-dict names; keeps the inverse singular
    values computed in the pass."""

    def __init__(self, layout: StackedLayout, tensors: Mapping[str, Tensor], batch: int) -> None:
        self.names = layout.names
        self.tensors = tensors
        self.inverse_sigmas: dict[str, Tensor] = {}
        for group in layout.spectral_norm_groups:  # one batched power iteration per group
            w = torch.stack([tensors[f"{name}.weight"].flatten(2) for name, _ in group])  # (k, B, out, in)
            u = torch.stack([m.u0 for _, m in group]).unsqueeze(1)  # (k, 1, 1, out)
            for (name, _), value in zip(group, eval_inverse_sigma(w, u, group[0][1].sn_eps).unbind(0)):
                self.inverse_sigmas[name] = value
        self.grouped = set(self.inverse_sigmas)
        self.fused = batch >= FUSED_SPECTRAL_NORM_MIN_BATCH  # see there

    def stacked(self, module: torch.nn.Module, attribute: str) -> Tensor | None:
        """The per-image ``(B, ...)`` tensor ``attribute`` of ``module``, or ``None`` when it is shared."""
        return self.tensors.get(f"{self.names[id(module)]}.{attribute}")

    def get(self, module: torch.nn.Module, attribute: str) -> tuple[Tensor | None, bool]:
        """``(tensor, per_image)``: the stacked tensor, or the module's own (shared) one."""
        value = self.stacked(module, attribute)
        if value is not None:
            return value, True
        return getattr(module, attribute), False

    def normalizes_itself(self, layer: SpectralNorm) -> bool:
        """Whether the layer's per-image weights are normalised in its own autograd function (large groups),
        rather than in ordinary operators or a batched power iteration shared with other layers."""
        name = self.names[id(layer)]
        return self.fused and f"{name}.weight" in self.tensors and name not in self.grouped

    def inverse_sigma(self, layer: SpectralNorm) -> Tensor:
        """``(B,)`` inverse singular values of a spectral-norm layer with per-image weights."""
        name = self.names[id(layer)]
        if name not in self.inverse_sigmas:
            w = self.tensors[f"{name}.weight"]
            self.inverse_sigmas[name] = eval_inverse_sigma(w.flatten(2), layer.u0, layer.sn_eps)
        return self.inverse_sigmas[name]


def _per_image(v: Tensor, dims: int) -> Tensor:
    """``(B, ...)`` -> ``(B, ...)`` followed by ``dims`` singleton dimensions, for broadcasting."""
    return v.reshape(*v.shape, *([1] * dims))


# Per-image linear layers (the conditional batch norms' and the first one) compute their spectral norm inside
# their own product (below) instead of in a shared power iteration: fewer passes over their weights forward and
# backward. Alternating rounds in one process: a step 1.9% and 3.2% faster for a group of 8 images on one thread
# (10 and 6 rounds), 1.3% and 3.4% for 32 (6 and 6), 1.4% and 2.2% for 16 images through the engine, -0.2% and
# 2.3% for 64; same-shaped layers stacked into one such product gained nothing more (1.000x for 8, 1.006x for 16).
class _NormalizedLinear(torch.autograd.Function):
    """``x[i] W[i]^T / sigma(W[i])`` for weights ``w`` ``(N, out, in)``, the layer's ``u`` ``(1, out)`` and inputs
    ``x`` ``(N, in)``, shape ``(N, out)``: sigma from one power iteration as in eval mode
    (:func:`~dgp.priors.layers.eval_inverse_sigma`, ``|a W^T| / |a|`` with ``a = u W`` held constant), its
    product ``a W^T`` and the layer's ``x W^T`` as one product of two rows with the weights (on a CPU several
    times faster than the weights times two columns), the weights' gradient as one product too (rank two)."""

    @staticmethod
    def forward(ctx, w: Tensor, u: Tensor, eps: float, x: Tensor) -> Tensor:  # noqa: ANN001
        rows, both, inverse = _linear_products(w, u, eps, x)
        ctx.save_for_backward(w, rows, both, inverse)
        return both[:, 1] * inverse.unsqueeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        w, rows, both, inverse = ctx.saved_tensors
        need_w, need_x = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        grad_y = grad * inverse.unsqueeze(1)  # of x W^T
        grad_w = grad_x = None
        if need_w:  # through x W^T and through 1 / sigma (a held constant)
            row = both[:, 0]
            coefficient = -(grad * both[:, 1]).sum(1) * inverse / row.square().sum(1)
            grad_w = torch.bmm(torch.stack([row * coefficient.unsqueeze(1), grad_y], dim=2), rows)
        if need_x:
            grad_x = torch.bmm(grad_y.unsqueeze(1), w).squeeze(1)
        return grad_w, None, None, grad_x


def _linear_products(w: Tensor, u: Tensor, eps: float, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows (N, 2, in), both (N, 2, out), inverse sigma (N,))`` of :class:`_NormalizedLinear`: the rows
    ``a = u W`` (held constant) and ``x``, and their products ``a W^T`` and ``x W^T``."""
    a = u @ w.detach()  # (N, 1, in)
    rows = torch.cat([a, x.unsqueeze(1)], dim=1)
    both = torch.bmm(rows, w.transpose(1, 2))
    inverse = torch.linalg.vector_norm(a, dim=(-2, -1)).clamp_min(eps) / torch.linalg.vector_norm(
        both[:, 0], dim=-1)
    return rows, both, inverse


def _normalized_rows(w: Tensor, u: Tensor, eps: float, x: Tensor) -> Tensor:
    """What :class:`_NormalizedLinear` computes, in ordinary operators (autograd's gradient: the weights' comes
    out transposed and is copied once)."""
    _, both, inverse = _linear_products(w, u, eps, x)
    return both[:, 1] * inverse.unsqueeze(1)


def _linear(weights: _Weights, layer: SNLinear, x: Tensor) -> Tensor:
    """``(B, in) -> (B, out)`` through a spectral-norm linear layer."""
    w = weights.stacked(layer, "weight")
    bias, _ = weights.get(layer, "bias")
    if w is None:
        return F.linear(x, layer.normalized_weight(), bias)
    if weights.fused:
        out = _NormalizedLinear.apply(w, layer.u0, layer.sn_eps, x)
    else:
        out = _normalized_rows(w, layer.u0, layer.sn_eps, x)
    return out if bias is None else out + bias


def _sigma_parts(w: Tensor, u: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(inverse sigma (B,), a (B, 1, n), a W^T (B, 1, out))`` of per-image weights ``w`` ``(B, out, n)`` with
    the layer's ``u`` ``(1, out)``: eval mode's one power iteration (:func:`~dgp.priors.layers.eval_inverse_sigma`,
    ``|a| / |a W^T|`` with ``a = u W`` held constant). Both are products of a row with the weights (on a CPU
    about twice as fast as a weight times a column)."""
    a = u @ w
    row = torch.bmm(a, w.transpose(1, 2))
    a_norm = torch.linalg.vector_norm(a, dim=(-2, -1)).clamp_min(eps)
    return a_norm / torch.linalg.vector_norm(row, dim=(-2, -1)), a, row


def _add_sigma_gradient(grad_w: Tensor, grad_inverse: Tensor, inverse: Tensor, a: Tensor, row: Tensor) -> Tensor:
    """Add, in place, the gradient through ``1 / sigma`` to ``grad_w`` ``(B, out, ...)``: ``grad_inverse``
    ``(B,)`` (the loss's derivative with respect to each image's ``1 / sigma``) times its derivative with respect
    to the weights, ``-(1/sigma) / |a W^T|^2 (a W^T)^T a`` (rank one: ``a`` is held constant)."""
    b, _, out = row.shape
    coefficient = -grad_inverse * inverse / row.square().sum((1, 2))
    grad_w.view(b, out, -1).addcmul_((row * coefficient[:, None, None]).transpose(1, 2), a)
    return grad_w


def _fused_affine(bias: Tensor | None, scale: Tensor | None, shift: Tensor | None) -> Tensor | None:
    """``(B, out)`` shift of ``(conv + bias) * scale + shift`` as ``conv * scale + shift'``, or ``None``."""
    if scale is None:
        return bias
    return shift if bias is None else torch.addcmul(shift, bias, scale)


def _affine_gradients(grad_sum: Tensor | None, grad_scale: Tensor | None, bias: Tensor | None,
                      scale: Tensor | None, needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """Gradients of ``bias``, ``scale`` and ``shift`` (as ``needs`` asks) of ``(conv + bias) * scale + shift``,
    from ``grad_sum`` ``(B, out)`` (the output's gradient summed over each plane) and ``grad_scale`` (that of the
    scale through the convolution alone)."""
    need_bias, need_scale, need_shift = needs
    grad_bias = None if not need_bias else grad_sum if scale is None else grad_sum * scale
    if need_scale and bias is not None:
        grad_scale = torch.addcmul(grad_scale, bias, grad_sum)
    return grad_bias, grad_scale if need_scale else None, grad_sum if need_shift else None


class _NormalizedConv(torch.autograd.Function):
    """Per-image convolutions divided by their weights' spectral norms, the norms' gradients written straight
    into the weights' (one rank-one update) instead of through autograd's products, sums and copies:
    ``x`` ``(B, in, H, W)``, raw ``w`` ``(B, out, in, k, k)``, ``bias`` ``(B, out)`` or ``None``, the layer's
    ``u`` ``(1, out)`` to ``(B, out, H', W')``, as one grouped convolution. With ``scale_output`` the
    convolution's output is divided by sigma (less work where an output plane is smaller than a filter, G's 8-
    and 16-px layers), and may be followed by a per-image, per-channel affine ``scale``, ``shift`` ``(B, out)``
    (the conditional batch norm after it, in eval mode) in the same pass; otherwise the weights are divided
    (``scale`` and ``shift`` must be ``None``)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, u: Tensor, eps: float,  # noqa: ANN001
                stride: tuple[int, int], padding: tuple[int, int], scale_output: bool, scale: Tensor | None,
                shift: Tensor | None) -> Tensor:
        b = x.shape[0]
        inverse, a, row = _sigma_parts(w.flatten(2), u, eps)
        flat_x = x.reshape(1, -1, *x.shape[2:])
        if scale_output:
            kernel = w
            unscaled = F.conv2d(flat_x, w.flatten(0, 1), None, stride, padding, groups=b)
            unscaled = unscaled.reshape(b, -1, *unscaled.shape[2:])
            total = inverse.unsqueeze(1) if scale is None else inverse.unsqueeze(1) * scale
            offset = _fused_affine(bias, scale, shift)
            out = (unscaled * total[:, :, None, None] if offset is None
                   else channel_affine(unscaled, total, offset))
            saved: tuple[Tensor, ...] = (unscaled,)  # the gradient of 1 / sigma: its product with the gradient
        else:
            if scale is not None or shift is not None:
                raise ValueError("a convolution that divides its weights cannot take an affine")
            kernel = w * _per_image(inverse, w.dim() - 1)
            out = F.conv2d(flat_x, kernel.flatten(0, 1), None if bias is None else bias.flatten(), stride, padding,
                           groups=b)
            out = out.reshape(b, -1, *out.shape[2:])
            saved = ()
        ctx.save_for_backward(x, w, kernel, inverse, a, row, bias, scale, *saved)
        ctx.settings = (stride, padding, scale_output)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        x, w, kernel, inverse, a, row, bias, scale, *unscaled = ctx.saved_tensors
        stride, padding, scale_output = ctx.settings
        b = x.shape[0]
        need_x, need_w, need_bias = ctx.needs_input_grad[:3]
        need_scale, need_shift = ctx.needs_input_grad[8:10]
        if not scale_output:  # grad_w is the gradient of w / sigma
            grad_x, grad_w, grad_bias = torch.ops.aten.convolution_backward(
                grad.reshape(1, -1, *grad.shape[2:]), x.reshape(1, -1, *x.shape[2:]), kernel.flatten(0, 1),
                None if bias is None else [bias.numel()], list(stride), list(padding), [1, 1], False, [0, 0], b,
                [need_x, need_w, need_bias])
            if need_w:
                grad_w = grad_w.view_as(w)
                grad_inverse = torch.linalg.vecdot(grad_w.view(b, -1), w.view(b, -1))
                grad_w.mul_(_per_image(inverse, w.dim() - 1))
                _add_sigma_gradient(grad_w, grad_inverse, inverse, a, row)
            return (None if grad_x is None else grad_x.view_as(x), grad_w,
                    None if grad_bias is None else grad_bias.view(b, -1), None, None, None, None, None, None, None)
        total = inverse.unsqueeze(1) if scale is None else inverse.unsqueeze(1) * scale
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(  # grad_w: the gradient of w itself
            (grad * total[:, :, None, None]).reshape(1, -1, *grad.shape[2:]), x.reshape(1, -1, *x.shape[2:]),
            kernel.flatten(0, 1), None, list(stride), list(padding), [1, 1], False, [0, 0], b,
            [need_x, need_w, False])
        # the gradient of the total scale, per image and channel
        grad_total = torch.linalg.vecdot(grad.flatten(2), unscaled[0].flatten(2)) if need_w or need_scale else None
        if need_w:
            grad_w = grad_w.view_as(w)
            grad_inverse = (grad_total if scale is None else grad_total * scale).sum(1)
            _add_sigma_gradient(grad_w, grad_inverse, inverse, a, row)
        grad_sum = grad.sum((2, 3)) if need_bias or need_shift or (need_scale and bias is not None) else None
        grad_bias, grad_scale, grad_shift = _affine_gradients(
            grad_sum, None if grad_total is None else grad_total * inverse.unsqueeze(1), bias, scale,
            (need_bias, need_scale, need_shift))
        return (None if grad_x is None else grad_x.view_as(x), grad_w, grad_bias, None, None, None, None, None,
                grad_scale, grad_shift)


class _UpsampledConv(torch.autograd.Function):
    """Per-image stride-2 transposed convolutions with 4x4 kernels summed from 3x3 ones (a 3x3 convolution of
    the 2x nearest-upsampled image, :func:`~dgp.priors.layers.upsampled_conv3x3`): ``x`` ``(B, in, H, W)``,
    ``w`` ``(B, out, in, 3, 3)``, ``bias`` ``(B, out)`` or ``None``, the ``(9, 16)`` ``taps``, the layer's
    ``u`` ``(1, out)`` to divide ``w`` by its spectral norm (``None``: ``w`` is used as it is), and optionally
    a per-image, per-channel affine ``scale``, ``shift`` ``(B, out)`` after the convolution (the conditional
    batch norm after it, in eval mode), folded into the kernels and biases, to ``(B, out, 2H, 2W)``.

    On a CPU the forward pass is fastest one image at a time, the backward pass as one grouped transposed
    convolution (its data and weight gradients in one call, with no per-image slices to gather); the spectral
    norm's gradient is written straight into the weights' (:class:`_NormalizedConv`)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, taps: Tensor, u: Tensor | None,  # noqa: ANN001
                eps: float, scale: Tensor | None, shift: Tensor | None) -> Tensor:
        b, out_channels, in_channels = w.shape[:3]
        sigma: tuple[Tensor, ...] = ()
        factor = scale  # (B, out) of the weights
        if u is not None:
            inverse, a, row = _sigma_parts(w.flatten(2), u, eps)
            sigma = (inverse, a, row)
            factor = inverse.unsqueeze(1) if scale is None else inverse.unsqueeze(1) * scale
        per_tap = torch.empty(b, in_channels, out_channels, 3, 3, dtype=w.dtype, device=w.device)
        if factor is None:
            per_tap.copy_(w.transpose(1, 2))
        else:  # scaled and transposed in one pass
            torch.mul(w.transpose(1, 2), factor[:, None, :, None, None], out=per_tap)
        # (B, in, out, 4, 4), as transposed convolutions take them, from one 2-D matrix product
        kernels = (per_tap.view(-1, 9) @ taps).view(b, in_channels, out_channels, 4, 4)
        offset = _fused_affine(bias, scale, shift)
        ctx.save_for_backward(x, w, kernels, taps, bias, scale, *sigma)
        biases = [None] * b if offset is None else offset.unbind(0)
        return torch.cat([F.conv_transpose2d(image, kernel, image_bias, stride=2, padding=1)
                          for image, kernel, image_bias in zip(x.split(1), kernels.unbind(0), biases)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        x, w, kernels, taps, bias, scale, *sigma = ctx.saved_tensors
        b, out_channels, in_channels = w.shape[:3]
        need_x, need_w, need_bias = ctx.needs_input_grad[:3]
        need_scale, need_shift = ctx.needs_input_grad[6:8]
        grad_x, grad_k, _ = torch.ops.aten.convolution_backward(
            grad.reshape(1, -1, *grad.shape[2:]), x.reshape(1, -1, *x.shape[2:]), kernels.flatten(0, 1), None,
            [2, 2], [1, 1], [1, 1], True, [0, 0], b, [need_x, need_w or need_scale, False])
        grad_w = grad_factor = None
        if grad_k is not None:  # (B, in, out, 4, 4) to (B, out, in, 3, 3) through the taps
            per_tap = (grad_k.view(-1, 16) @ taps.t()).view(b, in_channels, out_channels, 3, 3).transpose(1, 2)
            grad_w = torch.empty_like(w)
            if not sigma and scale is None:
                grad_w.copy_(per_tap)
            elif scale is None:  # sigma alone: divide by it afterwards (1 / sigma > 0)
                inverse, a, row = sigma
                torch.mul(per_tap, _per_image(inverse, 4), out=grad_w)  # the gradient of w itself
                grad_inverse = torch.linalg.vecdot(grad_w.view(b, -1), w.view(b, -1)) / inverse
                _add_sigma_gradient(grad_w, grad_inverse, inverse, a, row)
            else:
                grad_w.copy_(per_tap)  # the gradient of the scaled weights
                grad_factor = torch.linalg.vecdot(grad_w.flatten(2), w.flatten(2))  # (B, out)
                factor = scale if not sigma else sigma[0].unsqueeze(1) * scale
                grad_w.mul_(factor[:, :, None, None, None])
                if sigma:
                    inverse, a, row = sigma
                    _add_sigma_gradient(grad_w, (grad_factor * scale).sum(1), inverse, a, row)
        grad_sum = grad.sum((2, 3)) if need_bias or need_shift or (need_scale and bias is not None) else None
        grad_scale = None
        if need_scale and grad_factor is not None:
            grad_scale = grad_factor if not sigma else grad_factor * sigma[0].unsqueeze(1)
        grad_bias, grad_scale, grad_shift = _affine_gradients(grad_sum, grad_scale, bias, scale,
                                                              (need_bias, need_scale, need_shift))
        return (None if grad_x is None else grad_x.view_as(x), grad_w if need_w else None, grad_bias, None, None,
                None, grad_scale, grad_shift)


def _normalized_weights(weights: _Weights, layer: SNConv2d, stacked_weight: Tensor | None, batch: int) -> Tensor:
    """``(B, out, in, k, k)`` weights divided by sigma in ordinary operators: the per-image ``stacked_weight``,
    or the layer's own (shared, with per-image biases) when that is ``None``."""
    if stacked_weight is None:
        return layer.normalized_weight().expand(batch, *layer.weight.shape)
    return stacked_weight * _per_image(weights.inverse_sigma(layer), stacked_weight.dim() - 1)


def _conv(weights: _Weights, layer: SNConv2d, x: Tensor, upsample: bool = False,
          affine: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``(B, in, H, W) -> (B, out, H', W')`` through a spectral-norm convolution, of ``x`` upsampled 2x (nearest)
    when ``upsample`` is set, followed by ``affine``: a per-image, per-channel ``(scale, shift)``, each
    ``(B, out)`` (in the same pass where the convolution can take it)."""
    stacked_weight = weights.stacked(layer, "weight")
    bias, bias_per_image = weights.get(layer, "bias")
    scale, shift = (None, None) if affine is None else affine
    if stacked_weight is None and not bias_per_image:
        out = layer.forward_upsampled(x) if upsample else layer(x)
        return out if affine is None else channel_affine(out, scale, shift)
    b = x.shape[0]
    if bias is not None and not bias_per_image:
        bias = bias.expand(b, -1)
    if upsample and (2 * x.shape[-1] < layer.upsampled_conv_min_side or not layer.is_plain_3x3()):
        x, upsample = upsample_nearest_2x(x), False  # upsample, then convolve (as BigGAN does)
    own_sigma = weights.normalizes_itself(layer)
    if upsample:  # stride-2 transposed convolutions (as upsampled_conv3x3)
        if own_sigma:
            return _UpsampledConv.apply(x, stacked_weight, bias, layer.upsampled_taps, layer.u0, layer.sn_eps,
                                        scale, shift)
        w = _normalized_weights(weights, layer, stacked_weight, b)
        return _UpsampledConv.apply(x, w, bias, layer.upsampled_taps, None, 0.0, scale, shift)
    one_by_one = layer.kernel_size == (1, 1) and layer.padding == (0, 0) and layer.stride == (1, 1)
    # output planes smaller than a filter (G's 8- and 16-px layers): dividing the output by sigma is less work
    # than dividing the weight, forward and backward, and takes the affine in the same pass
    scale_output = (stacked_weight is not None and not one_by_one
                    and x.shape[2] * x.shape[3] < stacked_weight[0, 0].numel())
    if own_sigma and not one_by_one:
        if scale_output:
            return _NormalizedConv.apply(x, stacked_weight, bias, layer.u0, layer.sn_eps, layer.stride,
                                         layer.padding, True, scale, shift)
        out = _NormalizedConv.apply(x, stacked_weight, bias, layer.u0, layer.sn_eps, layer.stride, layer.padding,
                                    False, None, None)
    elif scale_output:
        out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), stacked_weight.flatten(0, 1), None, layer.stride,
                       layer.padding, groups=b)
        out = out.reshape(b, -1, *out.shape[2:])
        inverse = weights.inverse_sigma(layer).unsqueeze(1)  # (B, 1)
        out = out * inverse[:, :, None, None] if bias is None else channel_affine(out, inverse, bias)
    else:
        w = _normalized_weights(weights, layer, stacked_weight, b)
        if one_by_one:
            out = torch.bmm(w.flatten(2), x.flatten(2)).unflatten(2, x.shape[2:])
            out = out if bias is None else out + bias[:, :, None, None]
        else:
            out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w.flatten(0, 1), None if bias is None else bias.flatten(),
                           layer.stride, layer.padding, groups=b)
            out = out.reshape(b, -1, *out.shape[2:])
    return out if affine is None else channel_affine(out, scale, shift)


def _eval_affine(gain: Tensor, bias: Tensor, norm: ConditionalBatchNorm | BatchNorm) -> tuple[Tensor, Tensor]:
    """Batch norm in eval mode with per-image ``(B, C)`` or shared ``(C,)`` gain and bias as one
    ``x * scale + shift``: ``(scale, shift)``, shaped as the gain."""
    scale = gain * torch.rsqrt(norm.stored_var + norm.eps)
    return scale, bias - norm.stored_mean * scale


def _eval_norm(x: Tensor, gain: Tensor, bias: Tensor, norm: ConditionalBatchNorm | BatchNorm) -> Tensor:
    """Batch norm in eval mode (:func:`_eval_affine`) applied to ``x`` in one pass (its gradient with respect
    to ``x`` is one product)."""
    scale, shift = _eval_affine(gain, bias, norm)
    return channel_affine(x, scale, shift)


def _batch_norm_affine(weights: _Weights, bn: ConditionalBatchNorm, y: Tensor) -> tuple[Tensor, Tensor]:
    """Conditional batch norm's ``(scale, shift)``, each ``(B, C)``, for conditions ``y`` ``(B, cond_dim)``."""
    return _eval_affine(1 + _linear(weights, bn.gain, y), _linear(weights, bn.bias, y), bn)


def _batch_norm(weights: _Weights, bn: ConditionalBatchNorm, x: Tensor, y: Tensor) -> Tensor:
    """Conditional batch norm in eval mode: ``x`` ``(B, C, H, W)``, ``y`` ``(B, cond_dim)``."""
    return channel_affine(x, *_batch_norm_affine(weights, bn, y))


def _instance_norm(weights: _Weights, inorm: FrozenInstanceNorm, x: Tensor, match: Tensor | None) -> Tensor:
    """DGP's frozen instance norm with a per-image affine, first matched to ``match`` when given."""
    weight, bias = weights.stacked(inorm, "weight"), weights.stacked(inorm, "bias")
    if weight is None or bias is None:
        raise ValueError("a stacked forward pass with instance norm needs per-image instance-norm buffers")
    if match is not None:
        with torch.no_grad():
            flat = match.flatten(2)
            weight.copy_(flat.std(dim=2))
            bias.copy_(flat.mean(dim=2))
    return channel_affine(F.instance_norm(x, eps=inorm.eps), weight, bias)


def _block(weights: _Weights, block: GBlock, x: Tensor, y: Tensor, use_in: bool) -> Tensor:
    """One generator block (:class:`~dgp.priors.layers.GBlock`) with per-image weights."""

    def norm(bn: ConditionalBatchNorm, inorm: FrozenInstanceNorm, h: Tensor) -> Tensor:
        if not use_in:
            return _batch_norm(weights, bn, h, y)
        match = None
        if not block.in_ready:
            with torch.no_grad():
                match = _batch_norm(weights, bn, h, y)
        return _instance_norm(weights, inorm, h, match)

    h = torch.relu_(norm(block.bn1, block.in1, x))  # in place: a norm's backward pass needs its input only
    if block.learnable_sc:
        x = _conv(weights, block.conv_sc, x)  # before upsampling: the 1x1 convolution commutes with it
    if use_in:
        h = torch.relu_(norm(block.bn2, block.in2, _conv(weights, block.conv1, h, upsample=block.upsample)))
    else:  # the second norm's affine in the convolution's pass
        affine = _batch_norm_affine(weights, block.bn2, y)
        h = torch.relu_(_conv(weights, block.conv1, h, upsample=block.upsample, affine=affine))
    block.in_ready = use_in
    out = _conv(weights, block.conv2, h)
    return add_upsampled_2x(out, x) if block.upsample else out + x


def _attention(weights: _Weights, att: Attention, x: Tensor) -> Tensor:
    """Self-attention (:class:`~dgp.priors.layers.Attention`) with per-image weights."""
    b, c, h, w = x.shape
    theta = _conv(weights, att.theta, x).reshape(b, c // 8, h * w)
    phi = F.max_pool2d(_conv(weights, att.phi, x), 2).reshape(b, c // 8, h * w // 4)
    g = F.max_pool2d(_conv(weights, att.g, x), 2).reshape(b, c // 2, h * w // 4)
    beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)
    o = _conv(weights, att.o, (g @ beta.transpose(1, 2)).reshape(b, c // 2, h, w))
    gamma, per_image = weights.get(att, "gamma")
    return (_per_image(gamma, 3) if per_image else gamma) * o + x


def _output_layer(weights: _Weights, G: Generator, h: Tensor) -> Tensor:
    """Batch norm, ReLU, convolution and tanh: ``(B, C, R, R)`` features to ``(B, 3, R, R)`` images."""
    bn, conv = G.output_layer[0], G.output_layer[2]
    (gain, _), (bias, _) = weights.get(bn, "gain"), weights.get(bn, "bias")  # (B, C) or shared (C,)
    h = _eval_norm(h, gain, bias, bn)
    return torch.tanh(_conv(weights, conv, torch.relu_(h)))


class StackedLayout:
    """What a stacked forward pass of ``G`` needs to know once: module names, and which per-image spectral-norm
    convolution weights share a batched power iteration (same-shaped small ones, as
    :func:`~dgp.priors.layers.grouped_spectral_norm` groups them for one generator; linear layers normalise in
    their own product, :class:`_NormalizedLinear`).

    Args:
        G: the generator.
        stacked: names of the tensors that will be given per image.
        batch: the number of images B: weights whose B copies together exceed
            :data:`STACKED_GROUPED_SPECTRAL_NORM_MAX_NUMEL` elements are normalised layer by layer.
    """

    def __init__(self, G: Generator, stacked: Collection[str], batch: int) -> None:
        self.G = G
        self.names = {id(m): name for name, m in G.named_modules()}
        by_shape: dict[tuple, list[tuple[str, SpectralNorm]]] = {}
        for name, m in G.named_modules():
            if (isinstance(m, SpectralNorm) and not isinstance(m, SNLinear) and f"{name}.weight" in stacked
                    and m.weight.numel() <= GROUPED_SPECTRAL_NORM_MAX_NUMEL
                    and batch * m.weight.numel() <= STACKED_GROUPED_SPECTRAL_NORM_MAX_NUMEL):
                by_shape.setdefault((tuple(m.weight.shape), m.sn_eps), []).append((name, m))
        self.spectral_norm_groups = [group for group in by_shape.values() if len(group) > 1]


def stacked_generator_forward(layout: StackedLayout, tensors: Mapping[str, Tensor], z: Tensor,
                              class_ids: Tensor, use_in: bool = False) -> Tensor:
    """Images of B generators that differ in the tensors of ``tensors``.

    Args:
        layout: the generator ``layout.G`` (eval mode) and the names of its stacked tensors. Its own tensors
            are used wherever ``tensors`` has no entry, and its spectral-norm layers with shared weights should
            be frozen (:func:`dgp.reconstruct.freeze_untuned`).
        tensors: state-dict names to per-image tensors ``(B, *shape)``, as named to the layout: parameters (any
            of them) and the instance-norm buffers (``blocks.I.0.inN.weight/bias``, required with ``use_in``;
            matched in place).
        z: latents ``(B, dim_z)``.
        class_ids: ``(B,)`` class of each image (looked up in its own embedding table when that is stacked).
        use_in: run the blocks with DGP's instance norm instead of conditional batch norm.

    Returns:
        ``(B, 3, R, R)`` images in [-1, 1].
    """
    G = layout.G
    batch = z.shape[0]
    weights = _Weights(layout, tensors, batch)
    table = tensors.get("shared.weight")
    y = G.shared.weight[class_ids] if table is None else table[torch.arange(batch, device=z.device), class_ids]
    if G.config.hier:
        chunks = torch.split(z, G.z_chunk_size, dim=1)
        first = chunks[0]
        conds = [torch.cat([y, chunk], dim=1) for chunk in chunks[1:]]
    else:
        first, conds = z, [y] * len(G.blocks)
    h = _linear(weights, G.linear, first).reshape(batch, -1, G.bottom_width, G.bottom_width)
    for stage, cond in zip(G.blocks, conds):
        h = _block(weights, stage[0], h, cond, use_in)
        for extra in stage[1:]:
            h = _attention(weights, extra, h)
    return _output_layer(weights, G, h)
