"""Our models have exactly the state-dict keys and shapes of the released DGP checkpoints.

The manifests (``../shared/fixtures/biggan/checkpoint_keys.json``) list every key and shape of ``G_ema`` and ``D``
for the three released configurations. Models are built on the meta device, so no weights are allocated.
"""

from __future__ import annotations

import math

import pytest
import torch

from dgp.priors.biggan import BigGANConfig, Discriminator, Generator
from dgp.priors.checkpoint import INSTANCE_NORM_KEY, model_shapes
from dgp.priors.registry import get_spec

RELEASED = {"128": "biggan-imagenet-128", "256": "biggan-imagenet-256", "ch64_256": "biggan-imagenet-ch64-256"}


@pytest.mark.parametrize("key", sorted(RELEASED))
def test_state_dict_matches_manifest(released_manifest: dict, key: str) -> None:
    manifest = released_manifest[key]
    config = BigGANConfig.from_dict(manifest["config"])
    with torch.device("meta"):
        G, D = Generator(config), Discriminator(config)
    g_shapes, d_shapes = model_shapes(G), model_shapes(D)

    in_keys = set(manifest["G_ema_dgp_instance_norm_keys"])
    assert in_keys == {k for k in g_shapes if INSTANCE_NORM_KEY.match(k)}
    assert {k: list(s) for k, s in g_shapes.items() if k not in in_keys} == manifest["G_ema"]
    assert {k: list(s) for k, s in d_shapes.items()} == manifest["D"]
    # Key order matters to nobody, but the original order is kept (it reads like the architecture table).
    assert [k for k in g_shapes if k not in in_keys] == list(manifest["G_ema"])

    # The original counts the frozen instance-norm affine as parameters; ours keeps it in buffers.
    in_elements = sum(math.prod(g_shapes[k]) for k in in_keys)
    assert sum(p.numel() for p in G.parameters()) + in_elements == manifest["G_params"]
    assert sum(p.numel() for p in D.parameters()) == manifest["D_params"]


@pytest.mark.parametrize("key", sorted(RELEASED))
def test_registry_configs_match_manifest(released_manifest: dict, key: str) -> None:
    spec = get_spec(RELEASED[key])
    assert spec.config == BigGANConfig.from_dict(released_manifest[key]["config"])
    assert (spec.resolution, spec.n_classes) == (spec.config.resolution, spec.config.n_classes)
