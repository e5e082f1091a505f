"""Reading released weights: key checks, unsafe and damaged files, and spectral-norm buffers."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from dgp.priors.biggan import BigGANConfig, Discriminator, Generator
from dgp.priors.checkpoint import (
    INSTANCE_NORM_KEY,
    CheckpointError,
    check_state_dict,
    load_released,
    model_shapes,
    read_torch_file,
)
from dgp.priors.layers import SpectralNorm


def _save(tmp_path: Path, name: str, state: dict) -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def _g_state(config: BigGANConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return Generator(config).state_dict()


def _d_state(config: BigGANConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return Discriminator(config).state_dict()


def _released_like(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as a released file holds it: without DGP's instance-norm keys."""
    return {k: v for k, v in state.items() if not INSTANCE_NORM_KEY.match(k)}


def test_released_files_load_without_instance_norm_keys(tiny_config: BigGANConfig, tmp_path: Path) -> None:
    g_state, d_state = _g_state(tiny_config), _d_state(tiny_config)
    g_path = _save(tmp_path, "G.pth", _released_like(g_state))
    d_path = _save(tmp_path, "D.pth", d_state)
    G, D = load_released(tiny_config, g_path, d_path)
    assert D is not None and not G.training and not D.training
    for key, value in _released_like(g_state).items():
        assert torch.equal(G.state_dict()[key], value), key
    for key, value in d_state.items():
        assert torch.equal(D.state_dict()[key], value), key
    # Absent instance-norm affine keeps its identity default.
    assert torch.equal(G.blocks[0][0].in1.weight, torch.ones_like(G.blocks[0][0].in1.weight))


def test_missing_key_is_named(tiny_config: BigGANConfig, tmp_path: Path) -> None:
    state = _g_state(tiny_config)
    del state["linear.weight"], state["blocks.1.0.conv2.u0"]
    path = _save(tmp_path, "G.pth", state)
    with pytest.raises(CheckpointError) as info:
        load_released(tiny_config, path, None)
    message = str(info.value)
    assert "missing keys" in message and "linear.weight" in message and "blocks.1.0.conv2.u0" in message
    assert str(path) in message and "\n" not in message


def test_unexpected_key_is_named(tiny_config: BigGANConfig, tmp_path: Path) -> None:
    state = _d_state(tiny_config)
    state["blocks.9.0.conv1.weight"] = torch.zeros(1)
    path = _save(tmp_path, "D.pth", state)
    G_path = _save(tmp_path, "G.pth", _g_state(tiny_config))
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.9\.0\.conv1\.weight"):
        load_released(tiny_config, G_path, path)


def test_shape_mismatch_names_key_and_both_shapes(tiny_config: BigGANConfig, tmp_path: Path) -> None:
    state = _g_state(tiny_config)
    state["shared.weight"] = torch.zeros(5, 16)
    path = _save(tmp_path, "G.pth", state)
    with pytest.raises(CheckpointError) as info:
        load_released(tiny_config, path, None)
    assert "shape mismatch: shared.weight (file [5, 16], model [3, 16])" in str(info.value)


def test_check_state_dict_lists_every_kind_of_problem() -> None:
    expected = {"a": (2, 3), "b": (4,), "blocks.0.0.in1.weight": (4,)}
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, {"a": torch.zeros(3, 2), "c": torch.zeros(1)}, "file.pth")
    message = str(info.value)
    assert message.startswith("file.pth does not fit the model")
    assert "missing keys: b" in message and "unexpected keys: c" in message and "a (file [3, 2]" in message
    assert "in1" not in message  # instance-norm keys may be absent


class _Payload:
    """Unpickling this object creates the file named ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    # The payload is live: a plain unpickler runs it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "G_ema_128.pth"
    state = {"linear.weight": torch.zeros(2), "evil": _Payload(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
    with pytest.raises(CheckpointError) as info:
        read_torch_file(path)
    assert not marker.exists()
    message = str(info.value)
    assert "was refused" in message and "would run code" in message and str(path) in message


def test_truncated_file_gives_clear_error(tiny_config: BigGANConfig, tmp_path: Path) -> None:
    path = _save(tmp_path, "G.pth", _g_state(tiny_config))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            read_torch_file(path, mmap=mmap)
        assert str(path) in str(info.value)


def test_missing_and_non_state_dict_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="weights file not found"):
        read_torch_file(tmp_path / "absent.pth")
    path = _save(tmp_path, "list.pth", [torch.zeros(1)])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        read_torch_file(path)


def test_mmap_reading_gives_the_same_tensors(tiny_config: BigGANConfig, tmp_path: Path) -> None:
    state = _d_state(tiny_config)
    path = _save(tmp_path, "D.pth", state)
    mapped = read_torch_file(path, mmap=True)
    assert mapped.keys() == state.keys()
    assert all(torch.equal(mapped[k], state[k]) for k in state)


def _sn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{buf}": getattr(m, buf).clone() for name, m in model.named_modules()
            if isinstance(m, SpectralNorm) for buf in ("u0", "sv0")}


def _run(model: torch.nn.Module, config: BigGANConfig) -> None:
    gen = torch.Generator().manual_seed(3)
    if isinstance(model, Generator):
        z = torch.randn(2, model.dim_z, generator=gen)
        model(z, model.shared(torch.tensor([0, 1])))
    else:
        x = torch.rand(2, 3, config.resolution, config.resolution, generator=gen) * 2 - 1
        model(x, torch.tensor([0, 2]))


@pytest.mark.parametrize("cls", [Generator, Discriminator])
def test_spectral_norm_buffers_change_only_in_training(cls: type, tiny_config: BigGANConfig) -> None:
    torch.manual_seed(4)
    model = cls(tiny_config)
    with torch.no_grad():  # orthogonal init has singular values 1 = the initial sv0; move them away from it
        for m in model.modules():
            if isinstance(m, SpectralNorm):
                m.weight.mul_(1.5)
    before = _sn_buffers(model)
    assert before, "no spectral-norm layers found"
    model.eval()
    with torch.no_grad():
        _run(model, tiny_config)
    after_eval = _sn_buffers(model)
    assert all(torch.equal(before[k], after_eval[k]) for k in before)

    model.train()
    _run(model, tiny_config)
    after_train = _sn_buffers(model)
    changed = [k for k in before if not torch.equal(before[k], after_train[k])]
    assert set(changed) == set(before), f"unchanged in training: {sorted(set(before) - set(changed))[:5]}"


def test_model_shapes_of_meta_models_match_real_ones(tiny_config: BigGANConfig) -> None:
    with torch.device("meta"):
        meta_G = Generator(tiny_config)
    assert model_shapes(meta_G) == model_shapes(Generator(tiny_config))
