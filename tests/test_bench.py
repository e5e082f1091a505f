"""The quality benchmark end to end on a tiny synthetic image folder, a tiny prior and a tiny classifier."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dgp.bench.datasets import cifar10_split
from dgp.bench.quality import (METHODS, TASKS, BenchSettings, QualityBench, applicable, build_method,
                               default_methods, select_images, summarize)
from dgp.classifier import Classifier, ClassifierConfig, save_classifier
from dgp.cli import app
from dgp.cli import commands  # noqa: F401  (registers the commands)
from dgp.data import ImageFolder
from dgp.degradations import parse_degradation
from dgp.priors.checkpoint import save_prior

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def make_folder(root: Path, per_class: int = 2) -> Path:
    """``root/<colour>/NNNN.png``: 32x32 noisy images of each class's colour."""
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(rgb) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i:04d}.png")
    return root


@pytest.fixture
def bench_inputs(tmp_path: Path, tiny_prior) -> dict[str, Path]:
    data = make_folder(tmp_path / "data")
    prior = save_prior(tmp_path / "prior", tiny_prior.G, tiny_prior.D, {"class_names": list(COLOURS)})
    model = Classifier(ClassifierConfig(n_classes=3, widths=(4, 8, 8)), generator=torch.Generator().manual_seed(0))
    classifier = save_classifier(tmp_path / "classifier", model, {"class_names": list(COLOURS)})
    return {"data": data, "prior": prior, "classifier": classifier, "out": tmp_path / "out"}


# The GAN baselines and ablations run in test_baselines.py; here DGP stands for them (the runner treats every
# reconstructor alike), which keeps this end-to-end run to a few seconds.
CLI_METHODS = "dgp,dgp-sr-mse,dip,input,bicubic,telea,navier-stokes,nl-means"


def run_cli(args: list[str]):
    result = CliRunner().invoke(app, ["bench", "quality", *args])
    return result


def test_select_images_is_balanced_and_stable(tmp_path: Path) -> None:
    folder = ImageFolder.scan(make_folder(tmp_path / "d", per_class=4))
    chosen = select_images(folder, 5, seed=0)
    assert len(chosen.files) == 5
    assert chosen.labels[:3] == [0, 1, 2]  # round robin: every prefix is balanced
    assert select_images(folder, 5, seed=0).files == chosen.files
    assert len(select_images(folder, 100, seed=0).files) == 12


def test_method_applicability() -> None:
    size = (32, 32)
    sr = TASKS["sr4"]
    down = parse_degradation(sr.degradation, size=size)
    assert applicable("bicubic", sr, down, 32) and applicable("dgp-sr-mse", sr, down, 32)
    assert not applicable("telea", sr, down, 32)
    recon = TASKS["reconstruction"]
    assert not applicable("input", recon, parse_degradation("id", size=size), 32)
    assert "dgp-all-blocks" not in default_methods(TASKS["denoise0.1"], quick=True)
    assert "dgp-all-blocks" in default_methods(TASKS["denoise0.1"], quick=False)
    assert set(default_methods(TASKS["sr4"], quick=True)) == set(METHODS)  # sr4 runs the ablations
    s = summarize([{"psnr": 20.0, "ssim": 0.5, "seconds": 1.0, "top1": 1},
                   {"psnr": 22.0, "ssim": 0.7, "seconds": 3.0, "top1": 0}])
    assert s.psnr == pytest.approx(21.0) and s.psnr_std == pytest.approx(1.0) and s.top1 == 0.5 and s.seconds == 2.0


def test_bench_runs_every_task_writes_its_report_and_resumes(bench_inputs: dict[str, Path]) -> None:
    pytest.importorskip("cv2")
    out = bench_inputs["out"]
    args = ["--data", str(bench_inputs["data"]), "--prior", str(bench_inputs["prior"]), "--classifier",
            str(bench_inputs["classifier"]), "--n", "2", "--iterations-scale", "0.0001", "--candidates", "2",
            "--dip-iterations", "1", "--examples", "1", "--methods", CLI_METHODS, "-o", str(out)]
    first = run_cli(args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    assert "0 reused" in " ".join(first.output.split())
    for task in TASKS:
        assert (out / f"{task}.md").is_file() and (out / f"{task}.png").is_file(), task
    readme = (out / "README.md").read_text()
    assert "| DGP |" in readme and "Deep Image Prior" in readme and "Telea" in readme and "bicubic" in readme
    assert "clean images (no attack)" in readme and "original colour images" in readme
    assert "dgp bench quality --data" in readme and "--n 2" in readme
    results = json.loads((out / "results.json").read_text())
    assert len(results["images"]) == 2
    assert {r["task"] for r in results["records"]} == set(TASKS)
    assert all(r["method"] in results["summary"][r["task"]] for r in results["records"])
    assert results["summary"]["defense"]["dip"]["top1"] is not None
    assert (out / "images.txt").read_text().count("\n") == 3
    figure = Image.open(out / "sr4.png")
    assert figure.width > 32 * 3 * 7  # observation, the 5 SR methods, ground truth

    second = run_cli(args)
    assert second.exit_code == 0, second.output + repr(second.exception)
    assert "(0 restorations computed, 52 reused" in " ".join(second.output.split())
    assert (out / "README.md").read_text().count("| DGP |") == readme.count("| DGP |")

    changed = run_cli([*args[:-2], "--candidates", "3", "-o", str(out)])
    assert isinstance(changed.exception, ValueError) and "other settings" in str(changed.exception)


def test_bench_in_python_with_a_subset(bench_inputs: dict[str, Path], tiny_prior) -> None:
    events = []
    bench = QualityBench(tiny_prior, None, ImageFolder.scan(bench_inputs["data"]), bench_inputs["out"],
                         BenchSettings(n=2, iterations_scale=1e-4, candidates=0, dip_iterations=1, examples=0),
                         tasks=["colorization"], methods=["dgp", "input", "bicubic"], progress=events.append)
    result = bench.run()
    assert set(result.records["colorization"]) == {"dgp", "input"}  # bicubic does not fit colorization
    assert result.computed == 4 and result.summaries["colorization"]["input"].top1 is None
    assert [e.done for e in events if e.method == "dgp"] == [0, 1, 2]
    for method in METHODS:  # every method builds for a task it fits
        task = TASKS["sr4"] if method == "bicubic" else TASKS["inpainting"] if method in ("telea", "navier-stokes") \
            else TASKS["denoise0.1"] if method == "nl-means" else TASKS["colorization"]
        assert callable(build_method(method, task, tiny_prior, bench.settings))
    with pytest.raises(ValueError, match="defense task needs a classifier"):
        QualityBench(tiny_prior, None, ImageFolder.scan(bench_inputs["data"]), bench_inputs["out"],
                     BenchSettings(n=2), tasks=["defense"])
    with pytest.raises(ValueError, match="unknown method"):
        QualityBench(tiny_prior, None, ImageFolder.scan(bench_inputs["data"]), bench_inputs["out"],
                     BenchSettings(n=2), methods=["magic"])


def test_bench_restores_the_gan_methods_in_batches(bench_inputs: dict[str, Path], tiny_prior) -> None:
    data = ImageFolder.scan(bench_inputs["data"])
    settings = BenchSettings(n=3, iterations_scale=1e-4, candidates=2, dip_iterations=1, examples=0)

    def run(out: str, batch_size: int | None):
        bench = QualityBench(tiny_prior, None, data, bench_inputs["out"] / out, settings, tasks=["colorization"],
                             methods=["dgp", "gan-inversion", "dip"], batch_size=batch_size)
        return bench.run().records["colorization"]

    batched, alone = run("batched", None), run("alone", 1)
    for method in ("dgp", "gan-inversion"):
        assert [r["batch"] for r in batched[method]] == [3, 3, 3] and [r["batch"] for r in alone[method]] == [1] * 3
        assert [r["image"] for r in batched[method]] == [r["image"] for r in alone[method]]
        assert [r["seed"] for r in batched[method]] == [r["seed"] for r in alone[method]]  # each its own seed
        assert [r["psnr"] for r in batched[method]] == pytest.approx([r["psnr"] for r in alone[method]], abs=0.05)
    assert [r["batch"] for r in batched["dip"]] == [1, 1, 1]  # no batched engine: one at a time
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        QualityBench(tiny_prior, None, data, bench_inputs["out"], settings, batch_size=0)


def test_cifar10_split_unpacks_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_folder(tmp_path / "src" / "test", per_class=1)
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    with tarfile.open(shared / "data" / "cifar10-jpg.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="test")
    monkeypatch.setenv("DGP_SHARED", str(shared))
    monkeypatch.setenv("DGP_CACHE", str(tmp_path / "cache"))
    test = cifar10_split("test")
    assert test == tmp_path / "cache" / "cifar10" / "test"
    assert len(ImageFolder.scan(test).files) == 3
    (shared / "data" / "cifar10-jpg.tar.gz").unlink()
    assert cifar10_split("test") == test  # already unpacked: the archive is not needed again
    monkeypatch.setenv("DGP_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(FileNotFoundError, match="DGP_SHARED"):
        cifar10_split("test")


def test_bench_with_worker_processes_matches_one_process(bench_inputs: dict[str, Path], tiny_prior) -> None:
    pytest.importorskip("cv2")
    settings = BenchSettings(n=2, iterations_scale=1e-4, candidates=2, dip_iterations=1, examples=0)
    data = ImageFolder.scan(bench_inputs["data"])

    def run(out: Path, workers: int):
        bench = QualityBench(tiny_prior, None, data, out, settings, tasks=["colorization", "sr4"],
                             methods=["dgp", "input", "bicubic"])
        return bench.run(workers=workers)

    serial = run(bench_inputs["out"] / "serial", 1)
    parallel = run(bench_inputs["out"] / "parallel", 2)
    assert parallel.computed == serial.computed == 10 and parallel.cached == 0  # sr4: 3 methods, colorization: 2
    for task, methods in serial.records.items():
        for method, records in methods.items():
            got = parallel.records[task][method]
            assert [r["image"] for r in got] == [r["image"] for r in records]
            assert [r["psnr"] for r in got] == pytest.approx([r["psnr"] for r in records], abs=1e-3)
    readme = (bench_inputs["out"] / "parallel" / "README.md").read_text()
    assert "shared by 2 worker processes" in readme
    again = run(bench_inputs["out"] / "parallel", 2)  # everything cached: nothing recomputed
    assert again.computed == 0 and again.cached == 10
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run(bench_inputs["out"] / "other", 0)


def test_bench_workers_run_on_the_cpu_only(bench_inputs: dict[str, Path]) -> None:
    result = run_cli(["--data", str(bench_inputs["data"]), "--workers", "2", "--device", "cuda",
                      "-o", str(bench_inputs["out"])])
    assert result.exit_code == 2 and "CPU only" in result.output
    assert not bench_inputs["out"].exists()
