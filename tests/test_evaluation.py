"""Measuring a prior with a classifier: the Fréchet distance and `dgp priors evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dgp.classifier import Classifier, ClassifierConfig, save_classifier
from dgp.cli import main
from dgp.evaluation import class_samples, evaluate_prior, frechet_distance
from dgp.priors.checkpoint import save_prior


def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = torch.randn(400, 5, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(a, a)) < 1e-6


def test_frechet_distance_of_a_shift_is_the_squared_shift():
    a = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([1.0, -2.0, 0.5])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)


def test_frechet_distance_grows_with_scale_mismatch():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3000, 4, generator=g), torch.randn(3000, 4, generator=g)
    # N(0, I) vs N(0, 4I): 4 * (1 + 4 - 2 * 2) = 4 in the limit
    assert frechet_distance(a, b) < 0.1
    assert frechet_distance(a, 2 * b) == pytest.approx(4.0, rel=0.1)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4))


def _tiny_classifier(n_classes: int) -> Classifier:
    return Classifier(ClassifierConfig(n_classes=n_classes, widths=(4, 8, 8)),
                      generator=torch.Generator().manual_seed(0)).eval()


def test_evaluate_prior_reports_per_class_figures(tiny_prior):
    images, labels = class_samples(tiny_prior, 4, seed=3)
    assert images.shape == (12, 3, 32, 32) and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    real = ((torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(0))) * 255).to(torch.uint8)
    result = evaluate_prior(tiny_prior, _tiny_classifier(3), real, torch.arange(9) % 3, per_class=4)
    assert len(result.sample_accuracy_per_class) == 3
    assert result.sample_accuracy == pytest.approx(float(np.mean(result.sample_accuracy_per_class)))
    assert result.frechet_classifier_distance >= 0


def test_priors_evaluate_command_writes_report(tiny_prior, tmp_path, capsys, monkeypatch):
    prior_dir = save_prior(tmp_path / "prior", tiny_prior.G, tiny_prior.D,
                           {"class_names": tiny_prior.class_names})
    save_classifier(tmp_path / "clf", _tiny_classifier(3), {"class_names": tiny_prior.class_names})
    data = tmp_path / "data"
    for name in tiny_prior.class_names:
        (data / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(data / name / f"{i}.png")
    out = tmp_path / "report"
    monkeypatch.setattr("sys.argv", ["dgp", "priors", "evaluate", str(prior_dir), "--data", str(data),
                                     "--classifier", str(tmp_path / "clf"), "--per-class", "4", "-o", str(out),
                                     "--update-card"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    record = json.loads((out / "evaluation.json").read_text())
    assert set(record["conditional_sample_accuracy_per_class"]) == set(tiny_prior.class_names)
    assert (out / "samples.png").is_file() and "not FID" in (out / "evaluation.md").read_text()
    card = json.loads((prior_dir / "card.json").read_text())
    assert card["evaluation"]["samples_per_class"] == 4


def test_priors_evaluate_refuses_mismatched_classes(tiny_prior, tmp_path, capsys, monkeypatch):
    prior_dir = save_prior(tmp_path / "prior", tiny_prior.G, tiny_prior.D,
                           {"class_names": tiny_prior.class_names})
    save_classifier(tmp_path / "clf", _tiny_classifier(3), {"class_names": tiny_prior.class_names})
    data = tmp_path / "data"
    (data / "zebra").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "zebra" / "0.png")
    monkeypatch.setattr("sys.argv", ["dgp", "priors", "evaluate", str(prior_dir), "--data", str(data),
                                     "--classifier", str(tmp_path / "clf"), "-o", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "zebra" in err[0]
