"""The faster formulations of BigGAN's layers compute what the original ones compute (issue: speed).

Each is compared, in float64 so that only the order of additions can differ, with the formulation of the
original code: upsample-then-convolve, convolve-then-pool, batch norm then the affine, BigGAN's power iteration.
"""

from __future__ import annotations

import copy
import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from dgp.allocator import keep_freed_memory
from dgp.priors import layers
from dgp.priors.layers import (
    Attention,
    ConditionalBatchNorm,
    DBlock,
    GBlock,
    SNConv2d,
    SNLinear,
    add_upsampled_2x,
    channel_affine,
    constant_network,
    eval_inverse_sigma,
    frozen_spectral_norm,
    grouped_spectral_norm,
    narrow_conv3x3,
    pooled_conv3x3,
    spectral_sigma,
    upsample_nearest_2x,
    upsampled_conv3x3,
)


def _rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_rng(), dtype=torch.float64)


# (our layer, the original order of operations); both take (x, weight, bias) with a 3x3 weight
SAME_VALUE_CONVOLUTIONS = {
    "upsampled": (upsampled_conv3x3, lambda x, w, b: F.conv2d(F.interpolate(x, scale_factor=2), w, b, padding=1)),
    "narrow": (narrow_conv3x3, lambda x, w, b: F.conv2d(x, w, b, padding=1)),
}


@pytest.mark.parametrize("kind", sorted(SAME_VALUE_CONVOLUTIONS))
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 5, 7, 3), (3, 2, 1, 1)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_convolutions_equal_the_original_order(kind, shape, with_bias):
    ours_fn, theirs_fn = SAME_VALUE_CONVOLUTIONS[kind]
    x = _randn(*shape).requires_grad_(True)
    weight = _randn(3, shape[1], 3, 3).requires_grad_(True)
    bias = _randn(3).requires_grad_(True) if with_bias else None
    ours, theirs = ours_fn(x, weight, bias), theirs_fn(x, weight, bias)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # gradients too: the generator is fine-tuned through these layers
    g = _randn(*theirs.shape)
    inputs = [x, weight] + ([bias] if with_bias else [])
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(theirs, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(32, 3, 32, 32), (2, 3, 5, 7), (3, 1, 1, 2), (2, 2, 4, 4)])
def test_shifted_fold_is_pytorchs_fold_bit_for_bit(shape):
    """Float32, where rounding would show: the nine shifted additions sum in fold's order, and the planes'
    gradient is unfold's."""
    g = _rng()
    b, c, h, w = shape
    planes = torch.randn(b, c * 9, h * w, generator=g)
    grad = torch.randn(shape, generator=g)
    outputs = []
    for fold in (lambda p: layers._Fold3x3.apply(p, h, w), lambda p: F.fold(p, (h, w), 3, padding=1)):
        leaf = planes.clone().requires_grad_()
        out = fold(leaf)
        out.backward(grad)
        outputs.append((out, leaf.grad))
    (out, grad_planes), (ref, ref_grad) = outputs
    assert torch.equal(out, ref) and torch.equal(grad_planes, ref_grad)


def test_sn_conv_uses_the_narrow_path_only_for_few_outputs(monkeypatch):
    calls = []
    monkeypatch.setattr(layers, "narrow_conv3x3", lambda *args: calls.append(args) or F.conv2d(*args, padding=1))
    x = _randn(1, 8, 5, 5)
    SNConv2d(8, 3).double().eval()(x)
    assert len(calls) == 1
    SNConv2d(8, 16).double().eval()(x)
    SNConv2d(8, 3, 1, padding=0).double().eval()(x)
    assert len(calls) == 1


@pytest.mark.parametrize("in_channels, kernel, padding", [(3, 3, 1), (2, 1, 0), (4, 3, 0)])
@pytest.mark.parametrize("batch", [1, 5])
def test_sn_conv_with_few_inputs_equals_the_convolution(in_channels, kernel, padding, batch):
    """Few input channels (D's RGB layer) take PyTorch's im2col kernel on a CPU: the convolution's values and
    gradients, for the input and the weight alike."""
    conv = SNConv2d(in_channels, 6, kernel, padding=padding).double().eval()
    assert conv.in_channels <= conv.narrow_max_in_channels
    x = _randn(batch, in_channels, 7, 6).requires_grad_(True)
    ours = conv(x)
    theirs = F.conv2d(x, conv.normalized_weight(), conv.bias, padding=padding)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = _randn(*theirs.shape)
    inputs = [x, conv.weight, conv.bias]
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(theirs, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 4, 7, 5), (1, 2, 2, 2)])
def test_pooled_conv_equals_convolve_then_pool(shape):
    x = _randn(*shape).requires_grad_(True)
    weight, bias = _randn(6, shape[1], 3, 3), _randn(6)
    ours = pooled_conv3x3(x, weight, bias)
    theirs = F.avg_pool2d(F.conv2d(x, weight, bias, padding=1), 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = _randn(*theirs.shape)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(theirs, x, g)[0],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (5, 2, 3, 7)])  # one image: PyTorch's kernel; several: copies
def test_upsampling_copies_equal_interpolate_exactly(shape):
    """The two-copy nearest upsampling and the shortcut sum: PyTorch's values and gradients, bit for bit."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3]).requires_grad_(True)
    g = torch.randn(out.shape)
    up = F.interpolate(x, scale_factor=2)
    assert torch.equal(upsample_nearest_2x(x), up)
    assert torch.equal(add_upsampled_2x(out, x), out + up)
    expected = torch.autograd.grad(out + up, (out, x), g)
    for ours, theirs in zip(torch.autograd.grad(add_upsampled_2x(out, x), (out, x), g), expected):
        assert torch.equal(ours, theirs)
    assert torch.equal(torch.autograd.grad(upsample_nearest_2x(x), x, g)[0], expected[1])


@pytest.mark.parametrize("min_side", [1, 10**6])
def test_sn_conv_forward_upsampled_and_pooled(min_side):
    """Both paths of :meth:`SNConv2d.forward_upsampled` (transposed convolution or upsample first) and the
    pooled path agree with the layer applied to the upsampled / before pooling input."""
    conv = SNConv2d(3, 4).double().eval()
    conv.upsampled_conv_min_side = min_side
    conv.pooled_max_channels = 4 if min_side == 1 else 0  # the strided convolution, or conv then pool
    x = _randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(conv.forward_upsampled(x), conv(F.interpolate(x, scale_factor=2)))
        torch.testing.assert_close(conv.forward_pooled(x), F.avg_pool2d(conv(x), 2))
    pointwise = SNConv2d(3, 4, 1, padding=0).double().eval()  # not 3x3: the plain path
    with torch.no_grad():
        torch.testing.assert_close(pointwise.forward_pooled(x), F.avg_pool2d(pointwise(x), 2))
        torch.testing.assert_close(pointwise.forward_upsampled(x), pointwise(F.interpolate(x, scale_factor=2)))


def test_fused_path_constants_move_with_the_layer_and_are_not_saved():
    """The tap matrices live on the layer's device and dtype (no copy per step) and stay out of checkpoints."""
    conv = SNConv2d(3, 4).double()
    assert conv.upsampled_taps.dtype == conv.pooled_taps.dtype == torch.float64
    assert not {"upsampled_taps", "pooled_taps"} & set(conv.state_dict())
    assert not hasattr(SNConv2d(3, 4, 1, padding=0), "upsampled_taps")


def _biggan_sn_weight(layer: torch.nn.Module) -> torch.Tensor:
    """BigGAN-PyTorch's eval-mode spectral norm: one power iteration from ``u``, then ``W / sigma`` with
    ``sigma = (v W^T) . normalize(v W^T)``, the new ``u`` held constant."""
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    with torch.no_grad():
        v = F.normalize(layer.u0 @ w, eps=layer.sn_eps)
    wv = v @ w.t()
    sigma = (wv @ F.normalize(wv.detach(), eps=layer.sn_eps).t()).squeeze()
    return layer.weight / sigma


def test_eval_spectral_norm_equals_the_power_iteration():
    layer = SNConv2d(3, 4).double().eval()
    ours, theirs = layer.normalized_weight(), _biggan_sn_weight(layer)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = _randn(*ours.shape)
    torch.testing.assert_close(torch.autograd.grad(ours, layer.weight, g)[0],
                               torch.autograd.grad(theirs, layer.weight, g)[0], rtol=1e-12, atol=1e-12)
    u = layer.u0.clone()
    layer.train().normalized_weight()  # training mode stores its power iteration, eval mode never does
    assert not torch.equal(layer.u0, u)
    torch.testing.assert_close(layer.sv0, spectral_sigma(layer.weight, u, layer.sn_eps)[0].reshape(1))


@pytest.mark.parametrize("w_shape, u_shape", [((4, 6), (1, 4)), ((3, 4, 6), (1, 4)), ((2, 3, 4, 6), (2, 1, 1, 4))])
def test_inverse_sigma_as_a_matrix_product_equals_the_broadcast_form(w_shape, u_shape, monkeypatch):
    """Large weights take a matrix product: the broadcast form's values and gradients."""
    w, u = _randn(*w_shape).requires_grad_(True), _randn(*u_shape)
    theirs = eval_inverse_sigma(w, u, 1e-6)
    monkeypatch.setattr(layers, "BROADCAST_PRODUCT_MAX_NUMEL", 0)
    ours = eval_inverse_sigma(w, u, 1e-6)
    assert ours.shape == w_shape[:-2]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = _randn(ours.numel()).reshape(ours.shape)
    torch.testing.assert_close(torch.autograd.grad(ours, w, g)[0], torch.autograd.grad(theirs, w, g)[0],
                               rtol=1e-12, atol=1e-12)


def test_linear_scales_its_output_by_the_inverse_sigma():
    layer = SNLinear(5, 4).double().eval()
    x = _randn(3, 5).requires_grad_(True)
    ours, theirs = layer(x), F.linear(x, _biggan_sn_weight(layer), layer.bias)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = _randn(*ours.shape)
    inputs = [x, layer.weight, layer.bias]
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(theirs, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_bias", [True, False])
def test_sn_conv_scaling_its_output_equals_scaling_its_weight(with_bias, monkeypatch):
    """A large weight with a smaller output divides the output by sigma: BigGAN's values and gradients for the
    plain, upsampled and pooled convolutions; a frozen weight is used as it is."""
    monkeypatch.setattr(layers, "BROADCAST_PRODUCT_MAX_NUMEL", 0)  # these small weights count as large
    conv = SNConv2d(6, 5, bias=with_bias).double().eval()
    conv.upsampled_conv_min_side = 1
    x = _randn(2, 6, 4, 4).requires_grad_(True)
    cases = {  # (ours, BigGAN's with the normalised weight)
        "plain": (lambda: conv(x), lambda w: F.conv2d(x, w, conv.bias, padding=1)),
        "upsampled": (lambda: conv.forward_upsampled(x[..., :2, :2]),
                      lambda w: F.conv2d(F.interpolate(x[..., :2, :2], scale_factor=2), w, conv.bias, padding=1)),
        "pooled": (lambda: conv.forward_pooled(x), lambda w: F.avg_pool2d(F.conv2d(x, w, conv.bias, padding=1), 2)),
    }
    assert conv._scales_output(x, 16) and not conv._scales_output(x, 32)  # 2 x 16 < 54 <= 2 x 32
    inputs = [x, conv.weight] + ([conv.bias] if with_bias else [])
    for name, (ours_fn, theirs_fn) in cases.items():
        conv.normalized_weight = lambda: pytest.fail("the weight was scaled")  # type: ignore[method-assign]
        ours = ours_fn()
        del conv.normalized_weight
        theirs = theirs_fn(_biggan_sn_weight(conv))
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12, msg=name)
        g = _randn(*ours.shape)
        for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(theirs, inputs, g)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    with frozen_spectral_norm(conv), torch.no_grad():
        assert not conv._scales_output(x, 16)
        torch.testing.assert_close(conv(x), cases["plain"][1](_biggan_sn_weight(conv)), rtol=1e-12, atol=1e-12)


def test_grouped_spectral_norm_equals_each_layer_alone():
    """Same-shaped weights share one batched power iteration: the same values and gradients as each layer's
    own; other layers (a single shape, training mode, frozen) are left to compute theirs, and nothing stays
    set after the block."""
    torch.manual_seed(0)
    net = torch.nn.ModuleList([SNLinear(5, 4), SNLinear(5, 4), SNLinear(5, 4), SNConv2d(3, 4), SNLinear(2, 3),
                               SNLinear(5, 4), SNLinear(5, 4)]).double().eval()
    net[5].train()
    expected = [_biggan_sn_weight(m) for m in net]
    with frozen_spectral_norm(net[6]), grouped_spectral_norm(net):
        assert all(net[i].pass_inverse_sigma is not None for i in (0, 1, 2))
        assert all(net[i].pass_inverse_sigma is None for i in (3, 4, 5, 6))
        ours = [m.normalized_weight() for m in net[:5]]
    assert all(m.pass_inverse_sigma is None for m in net)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    grads = [_randn(*w.shape) for w in ours]
    params = [m.weight for m in net[:5]]
    for a, b in zip(torch.autograd.grad(ours, params, grads), torch.autograd.grad(expected[:5], params, grads)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_constant_network_takes_parameters_off_the_graph_and_restores_them():
    d = DBlock(3, 4, downsample=True, preactivation=False).double().eval()
    d.conv1.bias.requires_grad_(False)
    x = _randn(2, 3, 8, 8).requires_grad_(True)
    expected = d(x)
    with constant_network(d):
        assert not any(p.requires_grad for p in d.parameters())
        out = d(x)
        out.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert x.grad is not None and all(p.grad is None for p in d.parameters())
    assert [p.requires_grad for p in d.parameters()] == [p is not d.conv1.bias for p in d.parameters()]
    assert all(m.frozen_weight is None for m in (d.conv1, d.conv2, d.conv_sc))


def test_constant_network_holds_until_the_last_overlapping_block_ends():
    """Reconstructions in two threads share D: blocks entered and left out of order (as threads do) keep it
    constant until the last one leaves."""
    d = DBlock(3, 4, downsample=True, preactivation=False).eval()
    first, second = constant_network(d), constant_network(d)
    first.__enter__()
    frozen = d.conv1.frozen_weight
    second.__enter__()
    first.__exit__(None, None, None)
    assert not any(p.requires_grad for p in d.parameters()) and d.conv1.frozen_weight is frozen
    second.__exit__(None, None, None)
    assert all(p.requires_grad for p in d.parameters()) and d.conv1.frozen_weight is None
    with constant_network(d):  # and again from the start
        assert not any(p.requires_grad for p in d.parameters()) and d.conv1.frozen_weight is not None


def test_conditional_batch_norm_eval_folds_into_one_affine():
    bn = ConditionalBatchNorm(4, 6).double().eval()
    with torch.no_grad():
        bn.stored_mean.copy_(_randn(4))
        bn.stored_var.copy_(_randn(4).abs() + 0.1)
    x, y = _randn(3, 4, 5, 5), _randn(3, 6)
    out = bn(x, y)
    normalised = (x - bn.stored_mean[:, None, None]) / torch.sqrt(bn.stored_var[:, None, None] + bn.eps)
    expected = normalised * (1 + bn.gain(y))[..., None, None] + bn.bias(y)[..., None, None]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(32, 64, 16, 16), (3, 5, 7, 3), (1, 4, 4, 4), (2, 6, 1, 1)])
@pytest.mark.parametrize("per_image", [False, True])
def test_channel_affine_is_addcmul_bit_for_bit(shape, per_image):
    """Float32, where rounding would show: the batch-norm kernel gives addcmul's values and input gradient
    exactly; the scale's and shift's gradients are the same sums in another order."""
    g = _rng()
    b, c = shape[:2]
    x, grad = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    params = torch.randn(2, *((b, c) if per_image else (c,)), generator=g)
    results = []
    for affine in (channel_affine, lambda x, s, t: torch.addcmul(t[..., None, None], x, s[..., None, None])):
        leaves = [t.clone().requires_grad_() for t in (x, params[0], params[1])]
        out = affine(*leaves)
        out.backward(grad)
        results.append((out, *(t.grad for t in leaves)))
    (out, grad_x, grad_scale, grad_shift), (ref, ref_x, ref_scale, ref_shift) = results
    assert out.shape == shape and out._base is None  # a tensor of its own: a ReLU may follow in place
    assert torch.equal(out, ref) and torch.equal(grad_x, ref_x)
    torch.testing.assert_close(grad_scale, ref_scale, rtol=1e-4, atol=1e-4)  # sums of up to 8,192 products
    torch.testing.assert_close(grad_shift, ref_shift, rtol=1e-4, atol=1e-4)


def test_conditional_batch_norm_trains_with_batch_statistics():
    bn = ConditionalBatchNorm(4, 6).double().train()
    x, y = _randn(8, 4, 3, 3) * 3 + 2, _randn(8, 6)
    before = bn.stored_mean.clone()
    twin = copy.deepcopy(bn)  # spectral norm refines its vector at every training-mode call: use a twin
    out = bn(x, y)
    normalised = F.batch_norm(x, None, None, training=True, eps=bn.eps)
    expected = normalised * (1 + twin.gain(y))[..., None, None] + twin.bias(y)[..., None, None]
    torch.testing.assert_close(out, expected)
    assert not torch.equal(bn.stored_mean, before)  # running statistics updated


def _original_gblock(block: GBlock, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BigGAN's GBlock order: CBN-ReLU, upsample, conv, CBN-ReLU, conv; shortcut upsampled then 1x1 conv."""
    def cbn(bn: ConditionalBatchNorm, h: torch.Tensor) -> torch.Tensor:
        h = F.batch_norm(h, bn.stored_mean, bn.stored_var, None, None, False, 0.0, bn.eps)
        return h * (1 + bn.gain(y))[..., None, None] + bn.bias(y)[..., None, None]

    h = F.interpolate(F.relu(cbn(block.bn1, x)), scale_factor=2)
    h = F.conv2d(F.relu(cbn(block.bn2, block.conv1(h))), block.conv2.normalized_weight(), block.conv2.bias,
                 padding=1)
    return h + block.conv_sc(F.interpolate(x, scale_factor=2))


def _original_dblock(block: DBlock, x: torch.Tensor) -> torch.Tensor:
    """BigGAN's DBlock: [ReLU]-conv-ReLU-conv-pool; shortcut conv then pool (pre-activation) or pool then conv."""
    h = F.relu(x) if block.preactivation else x
    h = F.avg_pool2d(block.conv2(F.relu(block.conv1(h))), 2)
    sc = F.avg_pool2d(block.conv_sc(x), 2) if block.preactivation else block.conv_sc(F.avg_pool2d(x, 2))
    return h + sc


@pytest.mark.parametrize("min_side", [1, 10**6])
def test_blocks_equal_the_original_order_of_operations(min_side):
    torch.manual_seed(0)
    g = GBlock(4, 3, 5, upsample=True).double().eval()
    g.conv1.upsampled_conv_min_side = min_side
    for bn in (g.bn1, g.bn2):
        with torch.no_grad():
            bn.stored_mean.copy_(torch.rand(bn.stored_mean.shape, dtype=torch.float64))
            bn.stored_var.copy_(torch.rand(bn.stored_var.shape, dtype=torch.float64) + 0.5)
    x, y = _randn(2, 4, 4, 4), _randn(2, 5)
    with torch.no_grad():
        torch.testing.assert_close(g(x, y), _original_gblock(g, x, y), rtol=1e-12, atol=1e-12)
    for preactivation in (False, True):
        d = DBlock(3, 4, downsample=True, preactivation=preactivation).double().eval()
        with torch.no_grad():
            torch.testing.assert_close(d(_randn(2, 3, 8, 8)), _original_dblock(d, _randn(2, 3, 8, 8)),
                                       rtol=1e-12, atol=1e-12)


def test_keep_freed_memory_applies_on_glibc_and_is_harmless():
    """It applies where the C library is glibc, says so, and the process computes as before."""
    applied = keep_freed_memory()
    assert applied is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    x = torch.ones(2**20)
    assert float((x * 2).sum()) == 2.0 * 2**20


def _convolutional_attention(att: Attention, x: torch.Tensor) -> torch.Tensor:
    """SAGAN's self-attention as BigGAN writes it: 1x1 convolutions, pooled phi and g, ``g beta^T``."""
    b, c, h, w = x.shape
    theta = F.conv2d(x, att.theta.normalized_weight()).reshape(b, c // 8, h * w)
    phi = F.max_pool2d(F.conv2d(x, att.phi.normalized_weight()), 2).reshape(b, c // 8, h * w // 4)
    g = F.max_pool2d(F.conv2d(x, att.g.normalized_weight()), 2).reshape(b, c // 2, h * w // 4)
    beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)
    o = F.conv2d((g @ beta.transpose(1, 2)).reshape(b, c // 2, h, w), att.o.normalized_weight())
    return att.gamma * o + x


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_attention_as_products_equals_the_convolutions(frozen, batch):
    """Attention's matrix products (three projections in one) give BigGAN's values and gradients (input, every
    weight, gamma) in float64, for a tuned layer and for a frozen one (as D runs in a reconstruction)."""
    torch.manual_seed(0)
    att = Attention(16).double().eval()
    with torch.no_grad():
        att.gamma.fill_(0.7)
    x = _randn(batch, 16, 8, 8).requires_grad_(True)
    inputs = [x] + ([] if frozen else [att.theta.weight, att.phi.weight, att.g.weight, att.o.weight, att.gamma])
    g = _randn(batch, 16, 8, 8) + 0.5
    if frozen:
        with frozen_spectral_norm(att):
            ours, theirs = att(x), _convolutional_attention(att, x)
    else:
        ours, theirs = att(x), _convolutional_attention(att, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(theirs, inputs, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
