"""The registry of named priors, prior folders, class lookup and checking a folder of released files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dgp.priors import registry
from dgp.priors.biggan import BigGANConfig, Generator
from dgp.priors.checkpoint import INSTANCE_NORM_KEY, CheckpointError, save_prior
from dgp.priors.registry import (
    DEFAULT_PRIOR,
    Prior,
    PriorError,
    PriorSpec,
    check_weights_folder,
    get_spec,
    imagenet_class_names,
    list_priors,
    load_prior,
)


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DGP_WEIGHTS", raising=False)


def test_known_priors() -> None:
    names = [s.name for s in list_priors()]
    assert names == ["cifar10", "biggan-imagenet-128", "biggan-imagenet-256", "biggan-imagenet-ch64-256"]
    assert DEFAULT_PRIOR in names
    assert get_spec("biggan-imagenet-ch64-256").files == ("G_ema_ch64_256.pth", "D_ch64_256.pth")
    assert get_spec("biggan-imagenet-ch64-256").config.G_ch == 64


def test_unknown_prior_lists_known_names() -> None:
    with pytest.raises(PriorError) as info:
        load_prior("biggan-imagenet-512")
    message = str(info.value)
    assert "unknown prior 'biggan-imagenet-512'" in message and "\n" not in message
    for spec in list_priors():
        assert spec.name in message


def test_missing_prior_folder_path() -> None:
    with pytest.raises(PriorError, match="prior folder not found: ./no/such/prior"):
        load_prior("./no/such/prior")


def test_released_prior_without_weights_folder_says_what_to_do() -> None:
    with pytest.raises(PriorError) as info:
        load_prior("biggan-imagenet-128")
    message = str(info.value)
    assert "G_ema_128.pth and D_128.pth" in message
    assert "--weights DIR" in message and "DGP_WEIGHTS=DIR" in message


def test_released_prior_with_absent_folder(tmp_path: Path) -> None:
    folder = tmp_path / "nope"
    with pytest.raises(PriorError, match=f"weights folder {folder} does not exist.*G_ema_256.pth and D_256.pth"):
        load_prior("biggan-imagenet-256", weights=folder)


def test_released_prior_with_missing_file_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "G_ema_ch64_256.pth").write_bytes(b"")
    monkeypatch.setenv("DGP_WEIGHTS", str(tmp_path))  # found through the environment variable
    with pytest.raises(PriorError) as info:
        load_prior("biggan-imagenet-ch64-256")
    message = str(info.value)
    assert f"D_ch64_256.pth not found in {tmp_path}" in message
    assert f"--weights {tmp_path}" in message and f"DGP_WEIGHTS={tmp_path}" in message


def _tiny_released_spec(tmp_path: Path) -> tuple[PriorSpec, Path]:
    """A released-style prior with a tiny architecture and its .pth files written into a weights folder."""
    config = BigGANConfig(resolution=32, G_ch=4, D_ch=4, dim_z=32, shared_dim=16, n_classes=1000,
                          G_attn="16", D_attn="16")
    spec = PriorSpec("tiny-released", "test", 32, 1000, ("G_tiny.pth", "D_tiny.pth"), "released", config=config)
    torch.manual_seed(5)
    G, D = Generator(config), registry.Discriminator(config)
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save({k: v for k, v in G.state_dict().items() if not INSTANCE_NORM_KEY.match(k)}, folder / "G_tiny.pth")
    torch.save(D.state_dict(), folder / "D_tiny.pth")
    return spec, folder


def test_load_released_prior(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, folder = _tiny_released_spec(tmp_path)
    monkeypatch.setattr(registry, "_PRIORS", (*registry._PRIORS, spec))
    prior = load_prior("tiny-released", weights=folder)
    assert (prior.resolution, prior.n_classes, len(prior.class_names)) == (32, 1000, 1000)
    assert not prior.G.training and not prior.D.training
    assert prior.class_id("golden retriever") == 207
    assert prior.card["weights"]["G"] == str(folder / "G_tiny.pth")


def test_packaged_prior_absent_or_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          tiny_prior: Prior) -> None:
    spec = dataclasses.replace(get_spec("cifar10"), folder=tmp_path / "cifar10")
    monkeypatch.setattr(registry, "_PRIORS", (spec, *registry._PRIORS[1:]))
    with pytest.raises(PriorError, match="packaged prior cifar10 is not installed"):
        load_prior()
    save_prior(spec.folder, tiny_prior.G, tiny_prior.D, {"class_names": tiny_prior.class_names})
    prior = load_prior()
    assert prior.name == "cifar10" and prior.class_names == ["red", "green", "blue"]


def test_prior_folder_round_trip(tmp_path: Path, tiny_prior: Prior) -> None:
    folder = save_prior(tmp_path / "mine", tiny_prior.G, tiny_prior.D, {"class_names": tiny_prior.class_names})
    prior = load_prior(str(folder))
    assert prior.name == str(folder) and prior.class_names == tiny_prior.class_names
    assert prior.card["architecture"] == tiny_prior.G.config.to_dict()
    z = torch.randn(2, prior.G.dim_z, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(prior.G(z, prior.G.shared(y)), tiny_prior.G(z, tiny_prior.G.shared(y)))
        x = prior.G(z, prior.G.shared(y))
        torch.testing.assert_close(prior.D(x, y)[0], tiny_prior.D(x, y)[0])


def test_prior_folder_problems(tmp_path: Path, tiny_prior: Prior) -> None:
    folder = save_prior(tmp_path / "mine", tiny_prior.G, tiny_prior.D, {"class_names": ["only one"]})
    with pytest.raises(PriorError, match="class_names must be a list of 3 strings"):
        load_prior(folder)
    (folder / "D.safetensors").unlink()
    with pytest.raises(PriorError, match="D.safetensors not found"):
        load_prior(folder)
    (folder / "G_ema.safetensors").write_bytes(b"garbage")
    with pytest.raises(PriorError, match="is a file"):
        load_prior(folder / "G_ema.safetensors")


def test_prior_folder_with_corrupt_weights(tmp_path: Path, tiny_prior: Prior) -> None:
    folder = save_prior(tmp_path / "mine", tiny_prior.G, tiny_prior.D, {"class_names": tiny_prior.class_names})
    (folder / "G_ema.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_prior(folder)


def test_class_id_by_id_and_name(tiny_prior: Prior) -> None:
    assert tiny_prior.class_id(2) == 2
    assert tiny_prior.class_id(np.int64(0)) == 0
    assert tiny_prior.class_id("1") == 1
    assert tiny_prior.class_id(" Green ") == 1
    assert tiny_prior.class_id("BLUE") == 2


@pytest.mark.parametrize("spec, pattern", [
    (3, r"class id 3 is out of range for prior tiny \(0\.\.2\)"),
    ("-1", r"class id -1 is out of range"),
    ("gren", r"unknown class 'gren' for prior tiny; close matches: 'green' \(1\)"),
    ("purple", r"unknown class 'purple' for prior tiny; give a class name or an id 0\.\.2"),
    (True, r"class must be a name or an id"),
])
def test_class_id_errors(tiny_prior: Prior, spec: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        tiny_prior.class_id(spec)  # type: ignore[arg-type]


def test_imagenet_class_names() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[207], names[999]) == ("tench", "golden retriever", "toilet tissue")
    header = registry.IMAGENET_CLASSES_FILE.read_text().splitlines()[0]
    assert header.startswith("#") and "torchvision" in header


def test_imagenet_lookup(tiny_config: BigGANConfig) -> None:
    config = dataclasses.replace(tiny_config, n_classes=1000)
    prior = Prior("imagenet-tiny", Generator(config), registry.Discriminator(config), imagenet_class_names())
    assert prior.class_id("Golden Retriever") == 207
    assert prior.class_id("golden_retriever") == 207
    # "Cardigan" (the corgi, 264) and "cardigan" (the sweater, 474): exact case decides, otherwise ambiguous.
    assert (prior.class_id("Cardigan"), prior.class_id("cardigan")) == (264, 474)
    with pytest.raises(ValueError, match=r"ambiguous.*\(264\).*\(474\)"):
        prior.class_id("CARDIGAN")
    with pytest.raises(ValueError, match=r"close matches: .*'golden retriever' \(207\)"):
        prior.class_id("retriever")


def test_synonyms_in_class_names(tiny_config: BigGANConfig) -> None:
    prior = Prior("syn", Generator(tiny_config), registry.Discriminator(tiny_config),
                  ["tabby, tabby cat", "tiger cat", "Persian cat"])
    assert prior.class_id("tabby cat") == 0 and prior.class_id("tabby") == 0
    assert prior.class_id("persian CAT") == 2


def test_prior_to_returns_itself(tiny_prior: Prior) -> None:
    assert tiny_prior.to("cpu") is tiny_prior
    assert tiny_prior.device == torch.device("cpu")


# --- check_weights_folder ------------------------------------------------------------------------------


def test_check_weights_folder_with_tiny_spec(tmp_path: Path) -> None:
    spec, folder = _tiny_released_spec(tmp_path)
    results = check_weights_folder(folder, [spec])
    assert [(r.file, r.status) for r in results] == [("G_tiny.pth", "ok"), ("D_tiny.pth", "ok")]
    assert not any(r.problem for r in results)

    state = torch.load(folder / "D_tiny.pth", weights_only=True)
    state["linear.weight"] = torch.zeros(1, 7)
    del state["embed.u0"]
    torch.save(state, folder / "D_tiny.pth")
    (folder / "G_tiny.pth").write_bytes(b"PK\x03\x04 not really a zip")
    g, d = check_weights_folder(folder, [spec])
    assert g.status == "bad" and "truncated or corrupt" in g.message
    assert d.status == "bad" and "missing keys: embed.u0" in d.message and "linear.weight (file [1, 7]" in d.message

    (folder / "G_tiny.pth").unlink()
    g, d = check_weights_folder(folder, [spec])
    assert g.status == "missing" and g.problem and "D_tiny.pth" in g.message

    (folder / "D_tiny.pth").unlink()
    assert [r.status for r in check_weights_folder(folder, [spec])] == ["absent", "absent"]


def test_check_weights_folder_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(PriorError, match="weights folder not found"):
        check_weights_folder(tmp_path / "nope")


def test_check_weights_folder_on_released_layout(tmp_path: Path, fake_released) -> None:  # noqa: ANN001
    fake_released(tmp_path, "G_ema_128.pth", "128", "G_ema")
    fake_released(tmp_path, "D_128.pth", "128", "D")
    fake_released(tmp_path, "G_ema_ch64_256.pth", "ch64_256", "G_ema")
    fake_released(tmp_path, "D_ch64_256.pth", "256", "D")  # the width-96 D under the width-64 name
    results = check_weights_folder(tmp_path)
    status = {r.file: r.status for r in results}
    assert "shape mismatch: blocks.0.0.conv1.weight (file [96, 3, 3, 3], model [64, 3, 3, 3])" in results[-1].message
    assert status == {"G_ema_128.pth": "ok", "D_128.pth": "ok", "G_ema_256.pth": "absent", "D_256.pth": "absent",
                      "G_ema_ch64_256.pth": "ok", "D_ch64_256.pth": "bad"}
