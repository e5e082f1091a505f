"""Building blocks of BigGAN, state-dict compatible with BigGAN-PyTorch and the DGP release.

Every layer keeps the original parameter and buffer names (``u0``/``sv0`` for spectral norm,
``stored_mean``/``stored_var`` for batch norm, ``gain``/``bias`` for conditional batch norm) so that the
released checkpoints load unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def spectral_sigma(weight: Tensor, u: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """One power iteration on ``weight`` viewed as ``(out, -1)``, starting from ``u``.

    Args:
        weight: any-shaped weight whose first dimension is the number of outputs.
        u: ``(1, out)`` left singular vector estimate.
        eps: normalisation epsilon.

    Returns:
        ``(sigma, u_new)``: the differentiable estimate of the top singular value (scalar) and the updated,
        detached ``(1, out)`` vector.
    """
    w = weight.reshape(weight.shape[0], -1)
    with torch.no_grad():
        v = F.normalize(u @ w, eps=eps)
    wv = v @ w.t()  # (1, out), differentiable in w; the new u is its normalised, detached value
    u_new = F.normalize(wv.detach(), eps=eps)
    sigma = (wv @ u_new.t()).squeeze()
    return sigma, u_new


# Products of a weight with one row or column: up to this many weight elements as a broadcast product and a
# sum (faster on a CPU, forward and backward, than a matrix product, whose backward is an outer product);
# above, as a matrix product, which needs no temporary the size of the weight (measured on a CPU, forward
# and backward: 1.3-2.3x faster for the stacked weights of 8 to 32 images, 1.7-4.5x for one 768x6912 weight)
BROADCAST_PRODUCT_MAX_NUMEL = 1 << 17


def weight_times_row(w: Tensor, v: Tensor) -> Tensor:
    """``w`` ``(..., out, in)`` times ``v`` ``(..., 1, in)`` (broadcast over the leading dimensions), shape
    ``(..., out)``: as :data:`BROADCAST_PRODUCT_MAX_NUMEL` says, a broadcast product and a sum or a matrix
    product."""
    if w.numel() > BROADCAST_PRODUCT_MAX_NUMEL:
        return (w @ v.transpose(-1, -2)).squeeze(-1)
    return (w * v).sum(-1)


def eval_inverse_sigma(w: Tensor, u: Tensor, eps: float) -> Tensor:
    """``1 / sigma`` of ``w`` ``(..., out, in)`` from one power iteration with ``u`` ``(..., 1, out)``, shape
    ``(...)``: with ``a = u W`` held constant, ``|a| / |a W^T|`` (eval mode, where the new ``u`` is not kept).
    ``a W^T`` is a product with one row (:func:`weight_times_row`)."""
    a = u @ w.detach()
    a_norm = torch.linalg.vector_norm(a, dim=(-2, -1)).clamp_min(eps)
    return a_norm / torch.linalg.vector_norm(weight_times_row(w, a), dim=-1)


class SpectralNorm:
    """Mixin: a layer whose ``weight`` is divided by its top singular value.

    The vector ``u0`` is refined by one power iteration per forward pass and stored only in training mode;
    ``sv0`` records the last singular value (training mode only; it is never used in the computation).
    """

    weight: Tensor
    training: bool
    sn_eps: float
    frozen_weight: Tensor | None = None  # set by :func:`frozen_spectral_norm` while weights cannot change
    pass_inverse_sigma: Tensor | None = None  # set by :func:`grouped_spectral_norm` for one forward pass

    def _init_sn(self, num_outputs: int, eps: float) -> None:
        self.sn_eps = eps
        self.register_buffer("u0", torch.randn(1, num_outputs))  # type: ignore[attr-defined]
        self.register_buffer("sv0", torch.ones(1))  # type: ignore[attr-defined]

    def inverse_sigma(self) -> Tensor:
        """``1 / sigma`` (a differentiable scalar) from one power iteration; stored in training mode only.

        In eval mode, where the new ``u`` is not kept, fewer operators compute the same value: with ``a = u W``
        held constant, ``v = a / |a|`` and ``sigma = |v W^T|`` (:func:`spectral_sigma`'s
        ``(v W^T) . normalize(v W^T)``, with the same gradient), so ``1 / sigma = |a| / |a W^T|``.
        """
        if self.training:
            sigma, u_new = spectral_sigma(self.weight, self.u0, self.sn_eps)  # type: ignore[attr-defined]
            with torch.no_grad():
                self.u0.copy_(u_new)  # type: ignore[attr-defined]
                self.sv0.copy_(sigma.detach())  # type: ignore[attr-defined]
            return sigma.reciprocal()
        if self.pass_inverse_sigma is not None:
            return self.pass_inverse_sigma
        w = self.weight.reshape(self.weight.shape[0], -1)
        return eval_inverse_sigma(w, self.u0, self.sn_eps)  # type: ignore[attr-defined]

    def normalized_weight(self) -> Tensor:
        """``weight / sigma`` (the frozen copy inside :func:`frozen_spectral_norm`)."""
        if self.frozen_weight is not None and not self.training:
            return self.frozen_weight
        # one scalar and a product: cheaper than a division of the whole weight, forward and backward
        return self.weight * self.inverse_sigma()


@contextmanager
def frozen_spectral_norm(module: nn.Module) -> Iterator[None]:
    """Within the block, every spectral-norm layer of ``module`` (in eval mode) reuses its normalised weight.

    For a network whose weights do not change meanwhile (the discriminator during a reconstruction): the
    weight is computed once instead of at every forward pass. Eval-mode outputs are bit-identical.
    """
    layers = [m for m in module.modules() if isinstance(m, SpectralNorm)]
    with torch.no_grad():
        for m in layers:
            m.frozen_weight = None
            m.frozen_weight = m.normalized_weight().detach()
    try:
        yield
    finally:
        for m in layers:
            m.frozen_weight = None


# Weights up to this many elements are normalised in groups by :func:`grouped_spectral_norm`; larger ones
# alone (their arithmetic outweighs the per-operator cost, and stacking would copy them).
GROUPED_SPECTRAL_NORM_MAX_NUMEL = 1 << 14


@contextmanager
def grouped_spectral_norm(module: nn.Module) -> Iterator[None]:
    """Within the block, the eval-mode spectral-norm layers of ``module`` with same-shaped weights share one
    batched power iteration instead of a dozen small operators each, forward and backward.

    The inverse singular values are computed on entry, differentiably, for one forward pass (enter the block
    once per pass, around it). Layers in training mode (which store their power iteration), frozen layers
    (:func:`frozen_spectral_norm`) and weights above :data:`GROUPED_SPECTRAL_NORM_MAX_NUMEL` elements are
    left to compute their own. Values equal :meth:`SpectralNorm.inverse_sigma` up to float rounding.
    """
    by_shape: dict[tuple, list[SpectralNorm]] = {}
    for m in module.modules():
        if (isinstance(m, SpectralNorm) and not m.training and m.frozen_weight is None
                and m.weight.numel() <= GROUPED_SPECTRAL_NORM_MAX_NUMEL):
            shape = tuple(map(int, m.weight.shape))  # ints: while tracing (dgp.tracing), sizes are tensors
            by_shape.setdefault((shape, m.sn_eps), []).append(m)
    groups = [group for group in by_shape.values() if len(group) > 1]
    for group in groups:
        w = torch.stack([m.weight for m in group]).flatten(2)  # (k, out, in)
        u = torch.stack([m.u0 for m in group])  # type: ignore[attr-defined]  # (k, 1, out)
        inverse = eval_inverse_sigma(w, u, group[0].sn_eps)  # (k,)
        for m, value in zip(group, inverse.unbind(0)):
            m.pass_inverse_sigma = value
    try:
        yield
    finally:
        for group in groups:
            for m in group:
                m.pass_inverse_sigma = None


class _ConstantState:
    """What :func:`constant_network` restores, and how many blocks (of any thread) hold the module constant."""

    def __init__(self, module: nn.Module) -> None:
        self.flags = [(p, p.requires_grad) for p in module.parameters()]
        self.frozen = frozen_spectral_norm(module)
        self.holders = 0


_CONSTANT_NETWORKS: dict[int, _ConstantState] = {}  # id(module) -> its state, while held
_CONSTANT_NETWORKS_LOCK = threading.Lock()


@contextmanager
def constant_network(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module`` (in eval mode) is a constant function: its spectral norms are frozen
    (:func:`frozen_spectral_norm`) and none of its parameters requires a gradient, so that backward passes
    through it compute input gradients only. The parameters' ``requires_grad`` flags are restored after.

    Blocks may nest and overlap across threads (reconstructions sharing a prior, as the web UI's concurrent
    runs do): the first to enter makes the module constant, the last to leave restores it."""
    with _CONSTANT_NETWORKS_LOCK:
        state = _CONSTANT_NETWORKS.get(id(module))
        if state is None:
            state = _CONSTANT_NETWORKS[id(module)] = _ConstantState(module)
            state.frozen.__enter__()
            for p, _ in state.flags:
                p.requires_grad_(False)
        state.holders += 1
    try:
        yield
    finally:
        with _CONSTANT_NETWORKS_LOCK:
            state.holders -= 1
            if state.holders == 0:
                del _CONSTANT_NETWORKS[id(module)]
                for p, flag in state.flags:
                    p.requires_grad_(flag)
                state.frozen.__exit__(None, None, None)


def channel_affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` with one scale and shift per channel: ``x`` ``(B, C, H, W)``, ``scale`` and
    ``shift`` ``(C,)`` (shared by the images) or ``(B, C)`` (per image), to ``(B, C, H, W)``.

    Runs PyTorch's eval-mode batch-norm kernel with statistics 0 and 1 and no epsilon (per image over ``x``
    viewed as ``(1, B * C, H, W)``), which computes exactly ``x * scale + shift``: the values and the input's
    gradient are those of ``torch.addcmul(shift, x, scale)`` bit for bit (tested). On a CPU (one thread, 32
    images of 64 channels at 32 px) it runs forward in 0.70 against 1.29 ms, and forward and backward with
    the gradients of ``x``, the scale and the shift in 4.9 against 11.4 ms; those two gradients are sums taken
    in another order than autograd's, equal up to float rounding. Where only ``x`` needs its gradient, the
    kernel's backward pass is slower than addcmul's one product (1.2 against 0.7 ms), so addcmul runs.
    """
    if torch.is_grad_enabled() and x.requires_grad and not (scale.requires_grad or shift.requires_grad):
        return torch.addcmul(shift[..., None, None], x, scale[..., None, None])
    b, c, h, w = x.shape
    if scale.dim() == 1 and shift.dim() == 1:
        return F.batch_norm(x, x.new_zeros(c), x.new_ones(c), scale, shift, False, 0.0, 0.0)
    flat_scale, flat_shift = scale.expand(b, c).reshape(-1), shift.expand(b, c).reshape(-1)
    out = F.batch_norm(x.reshape(1, b * c, h, w), x.new_zeros(b * c), x.new_ones(b * c), flat_scale, flat_shift,
                       False, 0.0, 0.0)
    # reshaped as a tensor of its own, not a view of the kernel's output: a view could not be modified in
    # place (a ReLU) when it leaves an autograd function, and would be rebased by autograd when it is
    return torch.ops.aten._unsafe_view(out, [b, c, h, w])


def _box_taps(flip: bool) -> Tensor:
    """``(9, 16)`` 0/1 matrix taking a 3x3 kernel's taps (row-major) to the 4x4 kernel it becomes when summed
    over 2x2 windows of its zero-padded self (tap ``t`` of a row feeds box taps ``t`` and ``t + 1``), flipped
    in both directions when ``flip`` is set."""
    one_dim = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    if flip:
        one_dim = one_dim.flip(1)
    return torch.einsum("uk,vl->uvkl", one_dim, one_dim).reshape(9, 16)


def _widened(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, C, H, 1, 2W)``: a copy of ``x`` with every column twice, ready to broadcast over
    the doubled rows."""
    b, c, h, w = x.shape
    return x.unsqueeze(-1).expand(b, c, h, w, 2).reshape(b, c, h, 1, 2 * w)


def _upsample_backward(grad: Tensor, size: tuple[int, int, int, int]) -> Tensor:
    """The gradient of a 2x nearest upsampling to ``(B, C, H, W)`` ``size``: the sum over each 2x2 block of
    ``grad`` ``(B, C, 2H, 2W)`` (PyTorch's own kernel)."""
    b, c, h, w = size
    return torch.ops.aten.upsample_nearest2d_backward(grad, [2 * h, 2 * w], [b, c, h, w], 2.0, 2.0)


class _Upsample2x(torch.autograd.Function):
    """``F.interpolate(x, scale_factor=2)`` (nearest) for ``(B, C, H, W)`` ``x``, forward as two copies: the
    columns doubled (:func:`_widened`), then the rows.

    On a CPU, PyTorch's nearest-upsampling kernel copies a contiguous input and its output to and from the
    channels-last layout, and one copy of a view that repeats every element along its innermost dimension (a
    stride of 0) is slow too: for 8 images of 64 channels from 16 to 32 px, 0.64 ms against 0.27 ms for
    the two copies (one thread). The backward pass is PyTorch's own (the sum over each 2x2 block)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001 - autograd's signature
        b, c, h, w = x.shape
        ctx.input_size = (b, c, h, w)
        return _widened(x).expand(b, c, h, 2, 2 * w).reshape(b, c, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        return _upsample_backward(grad, ctx.input_size)


class _AddUpsampled2x(torch.autograd.Function):
    """``out + F.interpolate(x, scale_factor=2)`` (nearest) for ``out`` ``(B, C, 2H, 2W)`` and ``x``
    ``(B, C, H, W)``: the residual shortcut of an upsampling block, as one broadcast sum, with no upsampled copy
    of ``x`` in memory."""

    @staticmethod
    def forward(ctx, out: Tensor, x: Tensor) -> Tensor:  # noqa: ANN001
        b, c, h, w = x.shape
        ctx.input_size = (b, c, h, w)
        return (out.reshape(b, c, h, 2, 2 * w) + _widened(x)).reshape(b, c, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        return grad, _upsample_backward(grad, ctx.input_size)


# A single image keeps PyTorch's own upsampling: in alternating rounds of whole single-image steps (the lean
# path, 2 threads) the copies made a step 2.8% slower (median of 10 rounds); for a latent search's batch of
# 200 candidates they made the search 17% faster (median of 10 rounds)
def upsample_nearest_2x(x: Tensor) -> Tensor:
    """``F.interpolate(x, scale_factor=2)`` (nearest): ``(B, C, H, W) -> (B, C, 2H, 2W)``, the same values and
    gradient; for several images faster on a CPU (:class:`_Upsample2x`)."""
    if x.shape[0] == 1:
        return F.interpolate(x, scale_factor=2)
    return _Upsample2x.apply(x)


def add_upsampled_2x(out: Tensor, x: Tensor) -> Tensor:
    """``out + F.interpolate(x, scale_factor=2)`` (nearest) for ``out`` ``(B, C, 2H, 2W)`` and ``x``
    ``(B, C, H, W)``; for several images without an upsampled copy of ``x`` (:class:`_AddUpsampled2x`)."""
    if x.shape[0] == 1:
        return out + upsample_nearest_2x(x)
    return _AddUpsampled2x.apply(out, x)


def upsampled_taps() -> Tensor:
    """``(9, 16)`` taps of the transposed convolution that :func:`upsampled_conv3x3` runs (a flipped sum)."""
    return _box_taps(flip=True)


def pooled_taps() -> Tensor:
    """``(9, 16)`` taps of the strided convolution that :func:`pooled_conv3x3` runs (a mean)."""
    return _box_taps(flip=False) * 0.25


def _apply_taps(weight: Tensor, taps: Tensor) -> Tensor:
    """``(out, in, 3, 3) -> (out, in, 4, 4)`` through a ``(9, 16)`` tap matrix: one small matrix product."""
    out_channels, in_channels = weight.shape[:2]
    flat = weight.reshape(out_channels, in_channels, 9)
    return (flat @ taps).reshape(out_channels, in_channels, 4, 4)


def upsampled_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, taps: Tensor | None = None) -> Tensor:
    """``conv2d(interpolate(x, scale_factor=2), weight, bias, padding=1)`` without making the upsampled copy.

    A 3x3 convolution of a 2x nearest-upsampled image is a stride-2 transposed convolution of the original
    image with a 4x4 kernel: output pixel ``2i + a`` sees input pixels ``i - 1, i`` (a = 0) or ``i, i + 1``
    (a = 1) through taps summed from the 3x3 kernel. That is 4 instead of 9 multiply-adds per output and
    input channel, in one operation, and no upsampled input in memory.

    Args:
        x: ``(B, in, H, W)``.
        weight: ``(out, in, 3, 3)``.
        bias: ``(out,)`` or ``None``.
        taps: :func:`upsampled_taps` on the weight's device and dtype (made here when not given; layers keep
            theirs as a buffer, so that no step copies a constant to the device).

    Returns:
        ``(B, out, 2H, 2W)``, equal to the upsample-then-convolve result up to float rounding.
    """
    taps = upsampled_taps().to(weight) if taps is None else taps
    kernel = _apply_taps(weight, taps).transpose(0, 1)  # (in, out, 4, 4), as transposed convolutions take it
    return F.conv_transpose2d(x, kernel, bias, stride=2, padding=1)


def pooled_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, taps: Tensor | None = None) -> Tensor:
    """``avg_pool2d(conv2d(x, weight, bias, padding=1), 2)`` as one stride-2 convolution.

    Averaging 2x2 blocks of a 3x3 convolution's output is a 4x4 convolution (the kernel convolved with the
    2x2 box, over 4) evaluated at every other pixel: 16 instead of 4 x 9 = 36 multiply-adds per output, and
    no full-resolution output in memory.

    Args:
        x: ``(B, in, H, W)``.
        weight: ``(out, in, 3, 3)``.
        bias: ``(out,)`` or ``None``.
        taps: :func:`pooled_taps` on the weight's device and dtype (made here when not given).

    Returns:
        ``(B, out, H // 2, W // 2)``, equal to the convolve-then-pool result up to float rounding.
    """
    taps = pooled_taps().to(weight) if taps is None else taps
    return F.conv2d(x, _apply_taps(weight, taps), bias, stride=2, padding=1)


def _fold_slices(tap: int, size: int) -> tuple[slice, slice]:
    """``(output rows, plane rows)`` that a 3x3 tap at offset ``tap`` (0, 1 or 2) adds, padding 1."""
    return slice(max(0, tap - 1), min(size, size + tap - 1)), slice(max(0, 1 - tap), min(size, size + 1 - tap))


class _Fold3x3(torch.autograd.Function):
    """``F.fold(planes, (H, W), 3, padding=1)``: ``planes`` ``(B, C * 9, H * W)`` (rows by channel, then tap in
    row-major order) to ``(B, C, H, W)``, each tap's plane added at its offset.

    Forward as nine shifted in-place additions in the taps' order, which is the order of PyTorch's column-to-
    image loop, so the sums are the same bit for bit; backward (the planes' gradient, ``F.unfold`` of the
    output's) as one stacked copy of nine shifted views of the zero-padded gradient, the same values. PyTorch's
    CPU kernels for both loop element by element: for 32 images of 3 channels at 32 px these took 0.30 against
    1.36 ms forward and 0.28 against 1.32 ms backward (one thread)."""

    @staticmethod
    def forward(ctx, planes: Tensor, height: int, width: int) -> Tensor:  # noqa: ANN001
        b, rows = planes.shape[:2]
        taps = planes.view(b, rows // 9, 3, 3, height, width)
        out = planes.new_zeros(b, rows // 9, height, width)
        for i in range(3):
            out_rows, plane_rows = _fold_slices(i, height)
            for j in range(3):
                out_cols, plane_cols = _fold_slices(j, width)
                out[:, :, out_rows, out_cols].add_(taps[:, :, i, j, plane_rows, plane_cols])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        b, c, h, w = grad.shape
        padded = F.pad(grad, (1, 1, 1, 1))
        shifted = [padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)]
        return torch.stack(shifted, 2).view(b, c * 9, h * w), None, None


def narrow_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv2d(x, weight, bias, padding=1)`` for few output channels (G's 3-channel output layer), as one
    matrix product and a column-to-image sum (``F.fold``).

    Every output channel and tap gets its plane in one product of the ``(out * 9, in)`` flipped taps with
    ``x``; ``fold`` adds each tap's plane into the output at its offset. A CPU convolution kernel makes poor
    use of 3 output channels; this is 1.4x faster forward and backward for one 64-channel image at 32 px and
    2.3x for 32 images (micro-benchmark).

    Args:
        x: ``(B, in, H, W)``.
        weight: ``(out, in, 3, 3)``.
        bias: ``(out,)`` or ``None``.

    Returns:
        ``(B, out, H, W)``, equal to the convolution up to float rounding.
    """
    b, c, h, w = x.shape
    taps = weight.flip(2, 3).permute(0, 2, 3, 1).reshape(-1, c)  # (out * 9, in), rows in fold's order
    planes = torch.matmul(taps, x.reshape(b, c, h * w))  # (B, out * 9, H * W)
    # one image: PyTorch's fold (fewer operators); more: nine shifted additions (:class:`_Fold3x3`; sizes as
    # ints: a recording sees them as tensors)
    out = F.fold(planes, (h, w), 3, padding=1) if b == 1 else _Fold3x3.apply(planes, int(h), int(w))
    return out if bias is None else out + bias[:, None, None]


class SNConv2d(nn.Conv2d, SpectralNorm):
    """2-D convolution with spectral norm. Input ``(B, in, H, W)``, output ``(B, out, H', W')``.

    ``upsampled_conv_min_side`` chooses how :meth:`forward_upsampled` works, ``pooled_max_channels`` when
    :meth:`forward_pooled` uses one strided convolution, ``narrow_max_out_channels`` when :meth:`forward`
    uses :func:`narrow_conv3x3`, ``narrow_max_in_channels`` when it uses PyTorch's im2col convolution on a CPU.
    """

    # micro-benchmark on a CPU (3x3, forward and backward): the transposed convolution is slower than
    # upsample-then-convolve for 8- and 16-px outputs and faster from 32 px (1 or 16 images, 64 to 768 channels)
    upsampled_conv_min_side: int = 32
    # measured on a CPU: the strided 4x4 convolution is ~1.7x faster for 64-96 channels, even at 192 and
    # slower from 384 (6x at 768 channels, 16 px), where oneDNN seems to leave its fast path
    pooled_max_channels: int = 128
    # measured on a CPU: a 64->3 convolution is faster as a product and a fold (:func:`narrow_conv3x3`)
    narrow_max_out_channels: int = 4
    # measured on a CPU (D's RGB input layer, 3x3, forward and input gradient): PyTorch's own im2col kernel
    # is 2.3x faster than oneDNN's for 8 images at 32 px (one thread) and 3.7x for one image at 128 px (two
    # threads); PyTorch picks it by itself only for one small image
    narrow_max_in_channels: int = 4
    # divide the output rather than the weight by sigma where the output is the smaller (:meth:`_scales_output`)
    scale_output_when_smaller: bool = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 bias: bool = True, eps: float = 1e-6) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self._init_sn(out_channels, eps)
        if kernel_size == 3:  # constants of the fused paths; not saved, moved to the device with the layer
            self.register_buffer("upsampled_taps", upsampled_taps(), persistent=False)
            self.register_buffer("pooled_taps", pooled_taps(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.is_plain_3x3() and self.out_channels <= self.narrow_max_out_channels:
            return narrow_conv3x3(x, self.normalized_weight(), self.bias)
        if self.in_channels <= self.narrow_max_in_channels and x.device.type == "cpu" and self.groups == 1 \
                and self.dilation == (1, 1):
            return torch.ops.aten.thnn_conv2d(x, self.normalized_weight(), self.kernel_size, self.bias,
                                              self.stride, self.padding)
        if self._scales_output(x):
            return self._scaled(F.conv2d(x, self.weight, None, self.stride, self.padding))
        return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, self.padding)

    def _output_pixels(self, x: Tensor) -> int:
        """Pixels of one output plane of :meth:`forward` for ``x`` ``(B, in, H, W)``."""
        pixels = 1
        for size, k, s, p, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.padding, self.dilation):
            pixels *= (size + 2 * p - d * (k - 1) - 1) // s + 1  # type: ignore[operator]
        return pixels

    def _scales_output(self, x: Tensor, out_pixels: int | None = None) -> bool:
        """Whether to divide the output rather than the weight by sigma: while the weight is tuned (no frozen
        copy), is large (over :data:`BROADCAST_PRODUCT_MAX_NUMEL` elements) and has more elements than the
        output ``(B, out, out_pixels)`` (default: :meth:`forward`'s), so that the scaling and its gradient pass
        over fewer numbers (the 4- to 32-px layers of a 128-px BigGAN: weights of up to 21M elements against
        outputs of 1,536 x 64). Small weights, such as the shipped prior's, keep the weight's scaling (no gain
        measured there)."""
        large = self.weight.numel() > BROADCAST_PRODUCT_MAX_NUMEL
        if not (self.scale_output_when_smaller and large and self.groups == 1):
            return False
        if self.frozen_weight is not None and not self.training:
            return False
        pixels = self._output_pixels(x) if out_pixels is None else out_pixels
        return x.shape[0] * pixels < self.weight[0].numel()

    def _scaled(self, out: Tensor) -> Tensor:
        """``out`` (made with the unnormalised weight and no bias) divided by sigma, plus the bias."""
        if self.bias is None:
            return out * self.inverse_sigma()
        return torch.addcmul(self.bias[:, None, None], out, self.inverse_sigma())

    def forward_upsampled(self, x: Tensor) -> Tensor:
        """The convolution of ``x`` ``(B, in, H, W)`` upsampled 2x (nearest): ``(B, out, 2H, 2W)``.

        A 3x3 convolution with padding 1 runs as one stride-2 transposed convolution (:func:`upsampled_conv3x3`)
        when the output is at least :attr:`upsampled_conv_min_side` pixels wide; otherwise the input is
        upsampled and convolved as in BigGAN. The results agree up to float rounding.
        """
        side = 2 * x.shape[-1]
        if side >= self.upsampled_conv_min_side and self.is_plain_3x3():
            if self._scales_output(x, side * 2 * x.shape[-2]):
                return self._scaled(upsampled_conv3x3(x, self.weight, None, self.upsampled_taps))
            return upsampled_conv3x3(x, self.normalized_weight(), self.bias, self.upsampled_taps)
        return self(upsample_nearest_2x(x))

    def is_plain_3x3(self) -> bool:
        """Whether this is an ordinary 3x3 convolution (padding 1, stride 1, no dilation or groups)."""
        return (self.kernel_size == (3, 3) and self.padding == (1, 1) and self.stride == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1)

    def forward_pooled(self, x: Tensor) -> Tensor:
        """``avg_pool2d(self(x), 2)``: ``(B, in, H, W)`` -> ``(B, out, H // 2, W // 2)``, as one strided
        convolution for a 3x3 kernel with at most :attr:`pooled_max_channels` inputs (:func:`pooled_conv3x3`),
        equal up to float rounding."""
        if self.is_plain_3x3() and self.in_channels <= self.pooled_max_channels:
            if self._scales_output(x, (x.shape[-2] // 2) * (x.shape[-1] // 2)):
                return self._scaled(pooled_conv3x3(x, self.weight, None, self.pooled_taps))
            return pooled_conv3x3(x, self.normalized_weight(), self.bias, self.pooled_taps)
        return F.avg_pool2d(self(x), 2)


class SNLinear(nn.Linear, SpectralNorm):
    """Linear layer with spectral norm. Input ``(B, in)``, output ``(B, out)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, eps: float = 1e-6) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._init_sn(out_features, eps)

    def forward(self, x: Tensor) -> Tensor:
        """The product with the normalised weight, scaled on the output ``(B, out)``, which is smaller than the
        weight: no weight-sized pass forward or backward (the same values up to rounding)."""
        if self.frozen_weight is not None and not self.training:
            return F.linear(x, self.frozen_weight, self.bias)
        out = F.linear(x, self.weight) * self.inverse_sigma()
        return out if self.bias is None else out + self.bias


class SNEmbedding(nn.Embedding, SpectralNorm):
    """Embedding with spectral norm over the ``(num_embeddings, dim)`` table (the discriminator's projection)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, eps: float = 1e-6) -> None:
        nn.Embedding.__init__(self, num_embeddings, embedding_dim)
        self._init_sn(num_embeddings, eps)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.normalized_weight())


class Attention(nn.Module):
    """SAGAN self-attention block with a learned gain ``gamma`` (starts at 0). Shape-preserving on ``(B, C, H, W)``."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = channels
        self.theta = SNConv2d(channels, channels // 8, 1, padding=0, bias=False, eps=eps)
        self.phi = SNConv2d(channels, channels // 8, 1, padding=0, bias=False, eps=eps)
        self.g = SNConv2d(channels, channels // 2, 1, padding=0, bias=False, eps=eps)
        self.o = SNConv2d(channels // 2, channels, 1, padding=0, bias=False, eps=eps)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k, n = c // 8, h * w
        # the 1x1 convolutions as matrix products, theta's, phi's and g's in one (docs/speed-notes.md)
        projections = torch.cat([self.theta.normalized_weight(), self.phi.normalized_weight(),
                                 self.g.normalized_weight()]).flatten(1)  # (c/8 + c/8 + c/2, c)
        theta, rest = torch.matmul(projections, x.reshape(b, c, n)).split([k, k + c // 2], dim=1)
        phi, g = F.max_pool2d(rest.reshape(b, -1, h, w), 2).reshape(b, -1, n // 4).split([k, c // 2], dim=1)
        beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, HW, HW/4)
        # (B, HW, c/2): beta's gradient then comes out contiguous, as softmax's backward pass takes it
        mixed = torch.bmm(beta, g.transpose(1, 2))
        o = torch.matmul(self.o.normalized_weight().flatten(1), mixed.transpose(1, 2)).reshape(b, c, h, w)
        return self.gamma * o + x


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain ``1 + gain(y)`` and bias ``bias(y)`` come from a conditioning vector.

    Args:
        channels: feature channels ``C``.
        cond_dim: size of the conditioning vector ``y`` (class embedding, plus a z chunk when hierarchical).
    """

    def __init__(self, channels: int, cond_dim: int, eps: float = 1e-5, sn_eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = 0.1  # running-statistics update in training mode
        self.gain = SNLinear(cond_dim, channels, bias=False, eps=sn_eps)
        self.bias = SNLinear(cond_dim, channels, bias=False, eps=sn_eps)
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)``, ``y``: ``(B, cond_dim)``.

        In eval mode the normalisation and the conditional affine fold into one per-image, per-channel
        ``x * scale + shift`` (one pass over ``x`` forward, instead of three); in training mode the batch
        statistics are used and the running ones updated.
        """
        gain = 1 + self.gain(y)
        bias = self.bias(y)
        if self.training:
            out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, True, self.momentum, self.eps)
            return out * gain[..., None, None] + bias[..., None, None]
        scale = gain * torch.rsqrt(self.stored_var + self.eps)
        return channel_affine(x, scale, bias - self.stored_mean * scale)


class BatchNorm(nn.Module):
    """Unconditional batch norm with the original ``gain``/``bias``/``stored_*`` names (G's output layer)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = 0.1  # running-statistics update in training mode
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias, self.training,
                            self.momentum, self.eps)


class FrozenInstanceNorm(nn.Module):
    """Instance norm with a per-channel affine that is set once and never trained (DGP's ``use_in``).

    ``weight``/``bias`` are buffers named as in the DGP release (``inN.weight``/``inN.bias``).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))

    @torch.no_grad()
    def match(self, h: Tensor) -> None:
        """Set the affine so that this layer reproduces ``h`` ``(B, C, H, W)``: its per-channel mean and
        unbiased std over space (averaged over the batch when B > 1)."""
        flat = h.flatten(2)
        self.weight.copy_(flat.std(dim=2).mean(0))
        self.bias.copy_(flat.mean(dim=2).mean(0))

    def forward(self, x: Tensor) -> Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


class GBlock(nn.Module):
    """Generator residual block: CBN-ReLU-up-conv-CBN-ReLU-conv plus an upsampled 1x1 shortcut.

    ``conv1`` may convolve the upsampled input without materialising it (:meth:`SNConv2d.forward_upsampled`).

    With instance norm on, each CBN is replaced by a :class:`FrozenInstanceNorm` whose affine is matched to
    the CBN output on the first forward pass after switching on, then kept until switched off.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, upsample: bool,
                 bn_eps: float = 1e-5, sn_eps: float = 1e-6) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = SNConv2d(in_channels, out_channels, eps=sn_eps)
        self.conv2 = SNConv2d(out_channels, out_channels, eps=sn_eps)
        self.learnable_sc = in_channels != out_channels or upsample
        if self.learnable_sc:
            self.conv_sc = SNConv2d(in_channels, out_channels, 1, padding=0, eps=sn_eps)
        self.bn1 = ConditionalBatchNorm(in_channels, cond_dim, bn_eps, sn_eps)
        self.bn2 = ConditionalBatchNorm(out_channels, cond_dim, bn_eps, sn_eps)
        self.in1 = FrozenInstanceNorm(in_channels)
        self.in2 = FrozenInstanceNorm(out_channels)
        self.in_ready = False

    def _norm(self, bn: ConditionalBatchNorm, inorm: FrozenInstanceNorm, x: Tensor, y: Tensor,
              use_in: bool) -> Tensor:
        if not use_in:
            return bn(x, y)
        if not self.in_ready:
            with torch.no_grad():
                inorm.match(bn(x, y))
        return inorm(x)

    def forward(self, x: Tensor, y: Tensor, use_in: bool = False) -> Tensor:
        """``x``: ``(B, in, H, W)``, ``y``: ``(B, cond_dim)`` -> ``(B, out, 2H, 2W)`` (or ``(B, out, H, W)``)."""
        h = F.relu(self._norm(self.bn1, self.in1, x, y, use_in))
        if self.learnable_sc:
            # A 1x1 convolution commutes with nearest upsampling: applying it first gives the same values as
            # BigGAN's upsample-then-convolve with a quarter of the work.
            x = self.conv_sc(x)
        h = self.conv1.forward_upsampled(h) if self.upsample else self.conv1(h)
        h = F.relu(self._norm(self.bn2, self.in2, h, y, use_in))
        self.in_ready = use_in
        out = self.conv2(h)
        return add_upsampled_2x(out, x) if self.upsample else out + x


class DBlock(nn.Module):
    """Discriminator residual block (wide): [ReLU]-conv-ReLU-conv-[avgpool] plus a 1x1 shortcut.

    The second convolution and the pooling run as one strided convolution (:meth:`SNConv2d.forward_pooled`).
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, preactivation: bool,
                 sn_eps: float = 1e-6) -> None:
        super().__init__()
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv1 = SNConv2d(in_channels, out_channels, eps=sn_eps)
        self.conv2 = SNConv2d(out_channels, out_channels, eps=sn_eps)
        self.learnable_sc = in_channels != out_channels or downsample
        if self.learnable_sc:
            self.conv_sc = SNConv2d(in_channels, out_channels, 1, padding=0, eps=sn_eps)

    def _shortcut(self, x: Tensor) -> Tensor:
        # Average pooling commutes with the 1x1 convolution, so pooling first (BigGAN pools after it in
        # pre-activation blocks) gives the same values with a quarter of the convolution's work.
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        if self.learnable_sc:
            x = self.conv_sc(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(x) if self.preactivation else x
        h = torch.relu_(self.conv1(h))  # in place: a convolution's backward pass does not need its output
        h = self.conv2.forward_pooled(h) if self.downsample else self.conv2(h)
        return h + self._shortcut(x)
