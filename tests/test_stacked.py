"""The stacked forward pass of B generators equals each generator run alone, values and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from dgp.priors import layers
from dgp.priors import stacked as stacked_module
from dgp.priors.biggan import Generator
from dgp.priors.stacked import StackedLayout, stacked_generator_forward

from conftest import make_tiny_config

B = 3


def _generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(make_tiny_config()).double().eval()


def _per_image_weights(G: Generator, names: list[str], seed: int = 1) -> dict[str, torch.Tensor]:
    """``(B, *shape)`` perturbed copies of the named parameters (each image's weights differ)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(G.named_parameters())
    return {n: (params[n].detach() + 0.1 * torch.randn(B, *params[n].shape, generator=g, dtype=torch.float64)
                ).requires_grad_(True) for n in names}


def _alone(G: Generator, stacked: dict[str, torch.Tensor], i: int) -> Generator:
    """A copy of ``G`` holding image ``i``'s slice of every stacked tensor, as a leaf with its own gradient."""
    one = copy.deepcopy(G)
    state = {n: t[i].detach().clone() for n, t in stacked.items()}
    one.load_state_dict(state, strict=False)
    return one


@pytest.mark.parametrize("which", ["blocks", "everything"])
@pytest.mark.parametrize("use_in", [False, True])
@pytest.mark.parametrize("products", ["broadcast", "matrix"])
@pytest.mark.parametrize("spectral_norms", ["grouped", "per layer", "own functions"])
def test_stacked_forward_equals_each_generator_alone(which, use_in, products, spectral_norms, monkeypatch):
    if products == "matrix":  # the stacked weights' products with one column as matrix products (large batches)
        monkeypatch.setattr(layers, "BROADCAST_PRODUCT_MAX_NUMEL", 0)
    if spectral_norms != "grouped":  # no shared power iterations: every 3x3 weight as the prior's (64 channels)
        monkeypatch.setattr(stacked_module, "GROUPED_SPECTRAL_NORM_MAX_NUMEL", 0)
    if spectral_norms == "own functions":  # as large groups run: each weight normalised in an autograd function
        monkeypatch.setattr(stacked_module, "FUSED_SPECTRAL_NORM_MIN_BATCH", B)
    G = _generator()
    names = [n for n, _ in G.named_parameters()
             if which == "everything" or n.startswith(("blocks.", "linear."))]
    stacked = _per_image_weights(G, names)
    buffers = {f"blocks.{i}.0.{norm}.{b}": torch.ones(B, G.blocks[i][0].conv1.in_channels if norm == "in1"
                                                      else G.blocks[i][0].conv1.out_channels, dtype=torch.float64)
               for i in range(len(G.blocks)) for norm in ("in1", "in2") for b in ("weight", "bias")}
    z = torch.randn(B, G.dim_z, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    ids = torch.tensor([0, 2, 1])
    G.reset_instance_norm()
    tensors = {**stacked, **buffers}
    ours = stacked_generator_forward(StackedLayout(G, tensors, B), tensors, z, ids, use_in)
    grad_out = torch.randn_like(ours)
    *grads, grad_z = torch.autograd.grad(ours, [*stacked.values(), z], grad_out, allow_unused=True)
    for i in range(B):
        one = _alone(G, stacked, i)
        one.reset_instance_norm()
        table = one.shared.weight
        z_i = z[i:i + 1].detach().requires_grad_(True)
        theirs = one(z_i, table[ids[i:i + 1]], use_in=use_in)
        torch.testing.assert_close(ours[i:i + 1], theirs, rtol=1e-10, atol=1e-10)
        params = dict(one.named_parameters())
        *expected, expected_z = torch.autograd.grad(theirs, [*(params[n] for n in stacked), z_i], grad_out[i:i + 1],
                                                    allow_unused=True)
        torch.testing.assert_close(grad_z[i:i + 1], expected_z, rtol=1e-9, atol=1e-10)
        for name, a, b in zip(stacked, grads, expected):
            assert (a is None) == (b is None), name  # with instance norm, the CBN weights are not used
            if a is not None:
                torch.testing.assert_close(a[i], b, rtol=1e-9, atol=1e-10, msg=name)
        if use_in:  # each image's instance-norm affine was matched to its own activations
            for n, t in buffers.items():
                torch.testing.assert_close(t[i], dict(one.named_buffers())[n], rtol=1e-10, atol=1e-10, msg=n)


def test_stacked_forward_needs_per_image_instance_norm_buffers():
    G = _generator()
    stacked = _per_image_weights(G, [n for n, _ in G.named_parameters() if n.startswith("blocks.")])
    with pytest.raises(ValueError, match="instance-norm"):
        stacked_generator_forward(StackedLayout(G, stacked, B), stacked, torch.zeros(B, G.dim_z, dtype=torch.float64),
                                  torch.zeros(B, dtype=torch.long), use_in=True)


def test_large_batches_normalise_spectral_norms_layer_by_layer():
    G = _generator()
    names = [n for n, _ in G.named_parameters() if n.startswith("blocks.")]
    few = StackedLayout(G, names, batch=B)
    assert few.spectral_norm_groups  # the tiny prior's same-shaped convolutions share a power iteration
    largest = max(m.weight.numel() for group in few.spectral_norm_groups for _, m in group)
    many = StackedLayout(G, names, batch=stacked_module.STACKED_GROUPED_SPECTRAL_NORM_MAX_NUMEL // largest + 1)
    assert all(m.weight.numel() < largest for group in many.spectral_norm_groups for _, m in group)
