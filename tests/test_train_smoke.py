"""Smoke tests of ``dgp train prior`` and ``dgp train classifier`` on a tiny synthetic image folder."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from dgp.classifier import CIFAR10_CLASSES, Classifier, ClassifierConfig, ClassifierError, accuracy_by_class, \
    load_classifier, predict_logits, resolve_classifier
from dgp.cli import app
from dgp.cli import commands  # noqa: F401  (registers the commands)
from dgp.priors.checkpoint import load_prior_folder
from dgp.training.classifier import ClassifierTrainConfig, augment, train_classifier

CLASSES = ["blue", "green", "red"]  # sorted: the label order of the folder
TINY_PRIOR = ["--batch-size", "4", "--g-ch", "4", "--d-ch", "4"]
TINY_CLASSIFIER = ["--batch-size", "8", "--widths", "4,8,8"]
runner = CliRunner()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 8 random 32x32 PNGs, each class tinted by its colour."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(8):
            arr = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
            arr[..., c] += 120
            Image.fromarray(arr, "RGB").save(root / name / f"{i:04d}.png")
    return root


def dgp(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dgp ARGS`` single-threaded; returns the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dgp", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess[str] | Result, code: int) -> str:
    """Check the exit code and that the output is one ``error: ...`` line (no traceback); return it."""
    if isinstance(result, subprocess.CompletedProcess):
        exit_code, text = result.returncode, result.stderr.strip()
    else:
        exit_code, text = result.exit_code, result.output.strip()
    assert exit_code == code, text
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error: "), text
    return text


def checkpoint_step(run: Path) -> int:
    return int(torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["step"])


def test_train_prior_export_and_resume(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "prior-run"
    first = dgp("train", "prior", image_folder, "-o", run, "--steps", "2", *TINY_PRIOR, "--seed", "1",
                "--no-recalibrate")
    assert first.returncode == 0, first.stderr
    assert f"prior written to {run / 'prior'}" in first.stdout
    assert checkpoint_step(run) == 2
    G, D, card = load_prior_folder(run / "prior")
    assert card["class_names"] == CLASSES and card["training"]["steps_done"] == 2
    assert card["training"]["batch_norm_recalibrated"] is False
    z = torch.randn(2, G.dim_z, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = G(z, G.shared(torch.tensor([0, 2])))
        logits, _ = D(x, torch.tensor([0, 2]))
    assert x.shape == (2, 3, 32, 32) and x.abs().max() <= 1.0 and logits.shape[0] == 2
    # the trained prior restores an image through the engine
    from dgp.degradations import parse_degradation
    from dgp.priors.registry import load_prior
    from dgp.reconstruct import DGPReconstructor
    from dgp.schedule import get_preset

    prior = load_prior(str(run / "prior"))
    gray = parse_degradation("gray", size=(32, 32))
    result = DGPReconstructor(prior, get_preset("colorization").scaled(0.01, 0.01))(gray.observe(x[:1]), gray)
    assert result.image.shape == (1, 3, 32, 32) and torch.isfinite(result.image).all()
    assert len(result.history) == get_preset("colorization").scaled(0.01, 0.01).total_iterations

    again = runner.invoke(app, ["train", "prior", str(image_folder), "-o", str(run), "--steps", "3"])
    assert "--resume" in assert_one_line_error(again, 1)

    resumed = dgp("train", "prior", image_folder, "-o", run, "--steps", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint_step(run) == 3
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # continued, not restarted
    training = load_prior_folder(run / "prior")[2]["training"]
    assert training["steps_done"] == 3 and training["batch_norm_recalibrated"] is True


def test_train_classifier_export_and_resume(image_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "clf-run"
    first = dgp("train", "classifier", image_folder, "-o", run, "--epochs", "1", *TINY_CLASSIFIER,
                "--test", image_folder)
    assert first.returncode == 0, first.stderr
    assert "test top-1:" in first.stdout
    assert checkpoint_step(run) == 3  # 24 images / 8 per step
    model, card = load_classifier(run / "classifier")
    assert card["class_names"] == CLASSES and card["training"]["steps_done"] == 3
    assert 0.0 <= card["accuracy"]["top1"] <= 1.0 and set(card["accuracy"]["per_class"]) == set(CLASSES)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert model(x).shape == (2, 3) and model.features(x).shape == (2, 8)

    resumed = dgp("train", "classifier", image_folder, "-o", run, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint_step(run) == 6
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert load_classifier(run / "classifier")[1]["training"]["epochs_done"] == 2


@pytest.mark.parametrize("kind", ["prior", "classifier"])
def test_missing_and_empty_data_folders(kind: str, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["train", kind, str(tmp_path / "nope"), "-o", str(tmp_path / "run")])
    assert "data folder not found" in assert_one_line_error(missing, 2)
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["train", kind, str(tmp_path / "empty"), "-o", str(tmp_path / "run")])
    assert "no images found" in assert_one_line_error(empty, 2)


@pytest.mark.parametrize("kind", ["prior", "classifier"])
def test_nothing_to_resume(kind: str, image_folder: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", kind, str(image_folder), "-o", str(tmp_path / "run"), "--resume"])
    assert "nothing to resume" in assert_one_line_error(result, 1)


def test_bad_options(image_folder: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    widths = runner.invoke(app, ["train", "classifier", str(image_folder), "-o", out, "--widths", "4,x,8"])
    assert "--widths" in assert_one_line_error(widths, 2)
    device = runner.invoke(app, ["train", "classifier", str(image_folder), "-o", out, "--device", "tpu"])
    assert "device" in assert_one_line_error(device, 2)


def test_classifier_needs_classes(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(flat / f"{i}.png")
    result = runner.invoke(app, ["train", "classifier", str(flat), "-o", str(tmp_path / "run")])
    assert "class sub-folders" in assert_one_line_error(result, 1)


def test_classifier_training_is_deterministic_and_resumes_exactly(image_folder: Path, tmp_path: Path) -> None:
    config = ClassifierTrainConfig(widths=(4, 8, 8), epochs=2, batch_size=8, seed=3)
    whole = train_classifier(image_folder, tmp_path / "a", config)
    twice = train_classifier(image_folder, tmp_path / "b", config)
    # stop after every step (max_seconds=0) and resume until done: the same batches, the same weights
    piece = train_classifier(image_folder, tmp_path / "c", config, max_seconds=0)
    assert piece.step == 1
    while piece.step < piece.total_steps:
        piece = train_classifier(image_folder, tmp_path / "c", config, resume=True, max_seconds=0)
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, twice.model.state_dict()[name]), name
        assert torch.allclose(value, piece.model.state_dict()[name], atol=1e-6), name


def test_augment_shapes_and_range() -> None:
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [4, 4], [2, 2], [0, 4], [4, 0]])
    flips = torch.tensor([False, False, False, True, False])
    x = augment(images, offsets, flips, padding=2)
    assert x.shape == (5, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[2], images[2].float() / 127.5 - 1)  # centre crop, no flip: unchanged
    assert torch.equal(x[1, :, :-2, :-2], images[1, :, 2:, 2:].float() / 127.5 - 1)  # shifted by 2


def test_classifier_shapes_and_missing_folder(tmp_path: Path) -> None:
    model = Classifier(ClassifierConfig(n_classes=4, widths=(4, 8, 16)), generator=torch.Generator().manual_seed(0))
    model.init_whitening(torch.rand(16, 3, 32, 32) * 2 - 1)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert model(x).shape == (3, 4) and model.features(x).shape == (3, 16)
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ClassifierError, match="not found"):
        load_classifier(tmp_path / "nope")


def test_shipped_classifier_loads_by_default() -> None:
    model, card = load_classifier()
    assert card["class_names"] == CIFAR10_CLASSES
    assert card["accuracy"]["top1"] >= 0.85  # the acceptance target, measured on the shared test split
    assert card["training"]["cpu_seconds"] <= 3600
    assert (resolve_classifier() / "model.safetensors").stat().st_size < 8 * 2**20
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert model(x).shape == (2, 10) and model.features(x).shape == (2, model.feature_dim)


def test_shipped_classifier_accuracy_on_shared_subset(shared_dir: Path) -> None:
    """The first 100 test images of each class, read straight from the shared archive (a few seconds)."""
    archive = shared_dir / "data" / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    pattern = re.compile(r"(?:^|/)test/([a-z]+)/(\d{4})\.jpg$")
    images, labels = [], []
    with tarfile.open(archive) as tar:
        for member in tar:
            match = pattern.search(member.name)
            if match and int(match.group(2)) < 100:
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                    images.append(np.asarray(im.convert("RGB")))
                labels.append(CIFAR10_CLASSES.index(match.group(1)))
    assert len(images) == 1000
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    model, _ = load_classifier()
    top1, per_class = accuracy_by_class(predict_logits(model, x, flip=False), torch.tensor(labels), 10)
    assert top1 >= 0.85, per_class
