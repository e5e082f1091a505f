"""Batch runs: inputs, manifest, seeds, resuming, faults, local workers and Ray (issue 7).

Everything runs on a tiny random prior with one iteration per stage. The Ray tests share one local Ray
instance with 2 CPUs and skip when Ray is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dgp.batch import (BatchError, BatchSettings, Manifest, Row, auto_batch_size, image_seed, list_inputs,
                       make_backend, run_batch)
from dgp.batch.runner import OUTPUTS_FOLDER
from dgp.imageio import load_rgb, save_image
from dgp.pipeline import load_inputs, restore
from dgp.priors.biggan import BigGANConfig, Discriminator, Generator
from dgp.priors.checkpoint import save_prior
from dgp.priors.registry import Prior, load_prior

REPO = Path(__file__).resolve().parents[1]
SCALE = 0.001  # one iteration per stage


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random prior saved as a prior folder (for the CLI and for worker processes)."""
    config = BigGANConfig(resolution=32, G_ch=4, D_ch=4, dim_z=32, shared_dim=16, n_classes=3, G_attn="16",
                          D_attn="16")
    torch.manual_seed(0)
    G, D = Generator(config).eval(), Discriminator(config).eval()
    folder = tmp_path_factory.mktemp("prior") / "tiny"
    save_prior(folder, G, D, card={"class_names": ["red", "green", "blue"],
                                   "presets": {"iterations_scale": 0.01, "n_candidates": 4}})
    return folder


@pytest.fixture(scope="module")
def prior(prior_folder: Path) -> Prior:
    return load_prior(str(prior_folder))


def make_images(folder: Path, n: int, seed: int = 1) -> list[str]:
    """``n`` random images of odd sizes, ``img00.png``..."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    names = []
    for i in range(n):
        h, w = 30 + 3 * (i % 4), 41 - 2 * (i % 3)
        save_image(torch.rand(1, 3, h, w, generator=g) * 2 - 1, folder / f"img{i:02d}.png")
        names.append(f"img{i:02d}.png")
    return names


def settings(**kw) -> BatchSettings:
    return BatchSettings(**{"task": "colorize", "prior": "tiny", "degrade": True, "iterations_scale": SCALE, **kw})


def outputs(folder: Path) -> dict[str, torch.Tensor]:
    """Restored images of an output folder, as uint8 tensors by file name."""
    return {p.name: torch.from_numpy(np.asarray(load_rgb(p)).copy())
            for p in sorted((folder / OUTPUTS_FOLDER).glob("*.png"))}


def manifest_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    """Same output files, bitwise, and the same metrics (to 1e-6)."""
    out_a, out_b = outputs(a), outputs(b)
    assert out_a.keys() == out_b.keys() and out_a
    for name in out_a:
        assert torch.equal(out_a[name], out_b[name]), name
    rows_a = {r["name"]: r for r in manifest_lines(a)}
    rows_b = {r["name"]: r for r in manifest_lines(b)}
    assert rows_a.keys() == rows_b.keys()
    for name, row in rows_a.items():
        assert row["status"] == rows_b[name]["status"]
        assert row["class_id"] == rows_b[name]["class_id"]
        for key, value in row["metrics"].items():
            assert rows_b[name]["metrics"][key] == pytest.approx(value, abs=1e-6)


def stray_files(folder: Path) -> list[Path]:
    """Temporary or partial files: anything hidden except the lock."""
    return [p for p in folder.rglob(".*") if p.name != ".lock"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


# ------------------------------------------------------------------------------------------------ units


def test_image_seed_is_stable_and_depends_on_name_and_seed() -> None:
    assert image_seed(0, "cat.png") == image_seed(0, "cat.png") == 60597700321750120
    assert image_seed(0, "cat.png") != image_seed(1, "cat.png") != image_seed(1, "dog.png")
    assert 0 <= image_seed(123, "x") < 2**62


def test_list_inputs_folder_glob_and_list_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_images(data, 2)
    make_images(data / "sub", 1, seed=2)
    (data / "b.jpg").write_bytes(b"not really a jpeg")  # kept: it fails later, as one row
    (data / ".hidden.png").write_bytes(b"")
    (data / "notes.txt").write_text("x")
    assert [i.name for i in list_inputs(data)] == ["b.jpg", "img00.png", "img01.png"]
    assert [i.name for i in list_inputs(f"{data}/**/*.png")] == ["img00.png", "img01.png", "sub/img00.png"]
    assert list_inputs(f"{data}/**/*.png")[2].output_name == "sub/img00.png"
    listing = data / "list.txt"
    listing.write_text("# a comment\nimg01.png\n\nsub/img00.png\n")
    assert [i.name for i in list_inputs(listing)] == ["img01.png", "sub/img00.png"]

    (data / "img01.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="both be restored to img01.png"):
        list_inputs(data)
    listing.write_text("missing.png\n")
    with pytest.raises(ValueError, match="missing file"):
        list_inputs(listing)
    with pytest.raises(ValueError, match="no images"):
        list_inputs(data / "sub" / "*.webp")
    with pytest.raises(ValueError, match="not a folder"):
        list_inputs(tmp_path / "nowhere")


def test_manifest_last_row_wins_and_cut_lines_are_skipped(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path)
    manifest.append(Row("a.png", "failed", "in/a.png", error="boom", attempt=1))
    manifest.append(Row("b.png", "ok", "in/b.png", output="restored/b.png", metrics={"psnr": 20.0}))
    manifest.append(Row("a.png", "ok", "in/a.png", output="restored/a.png", attempt=2))
    with manifest.path.open("a") as f:
        f.write('{"name": "c.png", "sta')  # a line cut short by a crash
    rows = manifest.read()
    assert sorted(rows) == ["a.png", "b.png"]
    assert rows["a.png"].status == "ok" and rows["a.png"].attempt == 2
    manifest.compact()
    assert [r["name"] for r in manifest_lines(tmp_path)] == ["a.png", "b.png"]
    manifest.append(Row("c.png", "ok", "in/c.png"))  # appends after compaction are whole lines
    assert sorted(manifest.read()) == ["a.png", "b.png", "c.png"]


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="needs --degradation"):
        BatchSettings(task="restore", prior="tiny")
    with pytest.raises(ValueError, match="unknown task"):
        BatchSettings(task="sharpen", prior="tiny")
    s = BatchSettings(task="super-resolve", prior="tiny")
    assert (s.degradation, s.preset) == ("down4", "sr")
    assert BatchSettings(task="restore", prior="tiny", degradation="gray+hole").preset is None


# ------------------------------------------------------------------------------------------- local runs


def test_run_resumes_records_corrupt_images_and_checks_settings(tmp_path: Path, prior: Prior) -> None:
    data = tmp_path / "data"
    names = make_images(data, 4)
    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (data / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    events = []
    summary = run_batch(list_inputs(data), out, settings(), prior, on_event=events.append)
    assert (summary.ok, summary.failed, summary.skipped) == (4, 2, 0)
    assert sorted(summary.failed_names) == ["corrupt.png", "empty.jpg"]
    assert {"psnr", "ssim", "observation_psnr"} <= set(summary.metrics) and summary.images_per_minute > 0
    assert [e.kind for e in events].count("row") == 6 and events[0].kind == "start"
    rows = {r["name"]: r for r in manifest_lines(out)}
    assert sorted(rows) == sorted(names + ["corrupt.png", "empty.jpg"])
    for bad in ("corrupt.png", "empty.jpg"):
        assert rows[bad]["status"] == "failed" and "cannot read image" in rows[bad]["error"]
        assert rows[bad]["output"] is None
    for name in names:
        row = rows[name]
        assert row["status"] == "ok" and (out / row["output"]).is_file() and row["error"] is None
        assert row["seed"] == image_seed(0, name) and row["attempt"] == 1
        assert {"load", "restore", "write", "search"} <= set(row["timings"])
        assert set(row["metrics"]) == {"psnr", "ssim", "observation_psnr", "observation_ssim"}
    assert sorted(p.name for p in (out / OUTPUTS_FOLDER).iterdir()) == [n for n in names]
    assert json.loads((out / "batch.json").read_text())["settings"]["preset"] == "colorization"

    # A rerun skips what is done and retries what failed (one now fixed).
    before = outputs(out)
    save_image(torch.zeros(1, 3, 32, 32), data / "corrupt.png")
    summary = run_batch(list_inputs(data), out, settings(), prior)
    assert (summary.ok, summary.failed, summary.skipped) == (1, 1, 4)
    rows = {r["name"]: r for r in manifest_lines(out)}
    assert len(manifest_lines(out)) == 6  # one row per image
    assert rows["corrupt.png"]["status"] == "ok" and rows["corrupt.png"]["attempt"] == 2
    assert rows["empty.jpg"]["status"] == "failed" and rows["empty.jpg"]["attempt"] == 2
    assert all(torch.equal(before[k], outputs(out)[k]) for k in before)

    # A lost output file is restored again; other settings are refused.
    (out / rows["img01.png"]["output"]).unlink()
    assert run_batch(list_inputs(data), out, settings(), prior).ok == 1
    with pytest.raises(BatchError, match="other settings.*seed: 0 -> 5"):
        run_batch(list_inputs(data), out, settings(seed=5), prior)
    assert not stray_files(out)


def test_results_do_not_depend_on_order_or_references(tmp_path: Path, prior: Prior) -> None:
    data = tmp_path / "data"
    make_images(data, 3)
    inputs = list_inputs(data)
    run_batch(inputs, tmp_path / "a", settings(degrade=False), prior, batch_size=1)
    run_batch(inputs[::-1], tmp_path / "b", settings(degrade=False), prior, batch_size=1)
    run_batch(inputs[1:], tmp_path / "c", settings(degrade=False), prior, batch_size=1)
    assert_same_run(tmp_path / "a", tmp_path / "b")
    assert torch.equal(outputs(tmp_path / "a")["img02.png"], outputs(tmp_path / "c")["img02.png"])
    # References score the outputs (here: the inputs themselves) without changing them.
    summary = run_batch(inputs, tmp_path / "d", settings(degrade=False), prior, references=data)
    assert "psnr" in summary.metrics
    assert outputs(tmp_path / "d").keys() == outputs(tmp_path / "a").keys()
    with pytest.raises(BatchError, match="no reference"):
        run_batch(inputs, tmp_path / "e", settings(degrade=False), prior, references=tmp_path / "c")


def test_every_latent_search_draws_from_the_run_seed(tmp_path: Path, prior: Prior) -> None:
    data = tmp_path / "data"
    names = make_images(data, 2)
    run = settings(degrade=False, seed=5).resolved(prior)
    run_batch(list_inputs(data), tmp_path / "out", run, prior, batch_size=1)
    restored = outputs(tmp_path / "out")
    degradation, schedule = run.degradation_for(prior, 0), run.schedule(prior)
    for name in names:
        observation, _ = load_inputs(prior, degradation, data / name)
        alone = {}
        for seed in (5, image_seed(5, name)):  # the run's seed, and the image's own (its degradation's draws)
            save_image(restore(prior, degradation, schedule, observation=observation, seed=seed).output,
                       tmp_path / f"{seed}.png")
            alone[seed] = torch.from_numpy(np.asarray(load_rgb(tmp_path / f"{seed}.png")).copy())
        assert torch.equal(restored[name], alone[5])
        assert not torch.equal(restored[name], alone[image_seed(5, name)])  # the seed does change the result


def test_batched_engine_restores_groups(tmp_path: Path, prior: Prior) -> None:
    data = tmp_path / "data"
    make_images(data, 3)
    (data / "zz-corrupt.png").write_bytes(b"")
    summary = run_batch(list_inputs(data), tmp_path / "out", settings(), prior, batch_size=2)
    assert (summary.ok, summary.failed) == (3, 1)
    rows = {r["name"]: r for r in manifest_lines(tmp_path / "out")}
    assert [rows[f"img0{i}.png"]["batch"] for i in range(3)] == [2, 2, 1]
    single = run_batch(list_inputs(data), tmp_path / "single", settings(), prior, batch_size=1)
    assert single.ok == 3
    a, b = outputs(tmp_path / "out"), outputs(tmp_path / "single")
    assert torch.equal(a["img02.png"], b["img02.png"])  # restored alone in both runs
    for name in ("img00.png", "img01.png"):  # one iteration per stage: the batch stays within rounding
        assert (a[name].int() - b[name].int()).abs().max() <= 1


def test_runs_restore_in_even_chunks_by_default(tmp_path: Path, prior: Prior) -> None:
    data = tmp_path / "data"
    make_images(data, 5)
    (data / "zz-corrupt.png").write_bytes(b"")
    events = []
    summary = run_batch(list_inputs(data), tmp_path / "out", settings(), prior, on_event=events.append)
    assert (summary.ok, summary.failed) == (5, 1)
    assert (events[0].kind, events[0].total, events[0].batch_size, events[0].workers) == ("start", 6, 6, 1)
    assert {r["name"]: r["batch"] for r in manifest_lines(tmp_path / "out") if r["status"] == "ok"} == {
        f"img0{i}.png": 5 for i in range(5)}
    # The rule: chunks of at most 16, shared out evenly among the workers, fewer images for a large generator.
    assert [auto_batch_size(prior, n, 1) for n in (0, 1, 3, 16, 17, 40, 1000)] == [1, 1, 3, 16, 9, 14, 16]
    assert [auto_batch_size(prior, n, 2) for n in (1, 3, 16, 17)] == [1, 2, 8, 9]
    big = SimpleNamespace(G=torch.nn.Linear(8192, 8191, device="meta"))  # just under 1 GiB an image
    assert auto_batch_size(big, 40, 1) == 2 and auto_batch_size(big, 40, 4) == 2
    bigger = SimpleNamespace(G=torch.nn.Linear(8192, 8192, device="meta"))  # just over
    assert auto_batch_size(bigger, 40, 1) == 1


@pytest.fixture(scope="module")
def dozen(tmp_path_factory: pytest.TempPathFactory, prior: Prior) -> tuple[Path, Path]:
    """Twelve images and their restoration in this process: ``(inputs folder, output folder)``."""
    root = tmp_path_factory.mktemp("dozen")
    make_images(root / "data", 12)
    run_batch(list_inputs(root / "data"), root / "local", settings(), prior, batch_size=1)
    return root / "data", root / "local"


def test_worker_processes_match_and_survive_a_killed_worker(tmp_path: Path, prior: Prior,
                                                            dozen: tuple[Path, Path]) -> None:
    data, local = dozen
    marker = tmp_path / "killed"
    backend = make_backend(workers=2, kill_once=f"img05.png:{marker}")
    summary = run_batch(list_inputs(data), tmp_path / "out", settings(), prior, backend=backend, batch_size=1)
    assert marker.is_file()  # the hook did kill a worker
    assert (summary.ok, summary.failed, summary.retried) == (12, 0, 1)
    rows = manifest_lines(tmp_path / "out")
    assert sorted(r["name"] for r in rows) == sorted(p.name for p in data.iterdir())
    assert {r["name"]: r["attempt"] for r in rows}["img05.png"] == 2
    assert len({r["worker"] for r in rows}) >= 2
    assert {r["threads"] for r in rows} == {1}  # the test's one thread, shared out between 2 workers
    assert_same_run(local, tmp_path / "out")


def test_threads_per_worker_are_set_recorded_and_leave_the_caller_as_it_was(tmp_path: Path, prior: Prior) -> None:
    data = tmp_path / "data"
    make_images(data, 2)
    before = torch.get_num_threads()
    run_batch(list_inputs(data), tmp_path / "driver", settings(), prior, backend=make_backend(threads=2),
              batch_size=1)
    assert torch.get_num_threads() == before
    assert {r["threads"] for r in manifest_lines(tmp_path / "driver")} == {2}
    run_batch(list_inputs(data), tmp_path / "workers", settings(), prior, backend=make_backend(workers=2, threads=2),
              batch_size=1)
    assert {r["threads"] for r in manifest_lines(tmp_path / "workers")} == {2}
    assert_same_run(tmp_path / "driver", tmp_path / "workers")  # the same threads per worker: the same results
    run_batch(list_inputs(data), tmp_path / "default", settings(), prior)
    assert {r["threads"] for r in manifest_lines(tmp_path / "default")} == {before}
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        make_backend(threads=0)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_interrupted_run_leaves_no_partial_file_and_rerun_finishes(tmp_path: Path, prior_folder: Path) -> None:
    data = tmp_path / "data"
    # rows arrive a batch (up to 15 images, about 0.1 s each) at a time: after the first batch's rows, the three
    # batches left outlast the wait for them by seconds, even on a loaded machine (with 30 images the one batch
    # left finished first there once)
    count = 60
    make_images(data, count)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dgp", "batch", str(data), "--task", "colorize", "--degrade", "-o", str(out),
               "--prior", str(prior_folder), "--iterations-scale", str(SCALE)]
    proc = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and len(manifest.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run the same command again" in stderr
    done = {r["name"] for r in manifest_lines(out)}
    assert 2 <= len(done) < count, "the run was not interrupted part-way"
    assert not stray_files(out)
    assert sorted(p.name for p in (out / OUTPUTS_FOLDER).iterdir()) == sorted(done)

    result = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "skipped (done before)" in result.stdout and "images per minute" in result.stdout
    rows = manifest_lines(out)
    assert sorted(r["name"] for r in rows) == sorted(p.name for p in data.iterdir())
    assert all(r["status"] == "ok" and r["attempt"] == 1 for r in rows)
    assert len(list((out / OUTPUTS_FOLDER).iterdir())) == count
    assert not stray_files(out)


def test_cli_ray_flag_and_errors(tmp_path: Path, prior_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dgp.cli import app, commands  # noqa: F401
    from dgp.cli.batch import optional_value

    assert optional_value(["in", "--ray", "-o", "x"], "--ray", "local") == ["in", "--ray=local", "-o", "x"]
    assert optional_value(["in", "--ray", "h:6379"], "--ray", "local") == ["in", "--ray", "h:6379"]
    assert optional_value(["in", "--ray"], "--ray", "local") == ["in", "--ray=local"]
    data = tmp_path / "data"
    make_images(data, 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(app, ["batch", str(data), "--task", "colorize", "-o", str(tmp_path / "o"), "--ray"])
    assert isinstance(result.exception, BatchError)
    assert "pip install 'dgp[distributed]'" in str(result.exception)
    result = CliRunner().invoke(app, ["batch", str(data), "--task", "restore", "-o", str(tmp_path / "o")])
    assert isinstance(result.exception, ValueError) and "needs --degradation" in str(result.exception)
    result = CliRunner().invoke(app, ["batch", str(data), "--task", "colorize", "-o", str(tmp_path / "o"),
                                      "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output and not (tmp_path / "o").exists()


# -------------------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_session():  # noqa: ANN201
    """One local Ray instance with 2 CPUs for the Ray tests of this module."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'dgp[distributed]')")
    import logging

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def test_ray_run_matches_local_run(ray_session, tmp_path: Path, prior: Prior, dozen: tuple[Path, Path]) -> None:
    data, local = dozen
    backend = make_backend(workers=2, use_ray=True)
    summary = run_batch(list_inputs(data), tmp_path / "ray", settings(), prior, backend=backend, batch_size=1)
    assert (summary.ok, summary.failed, summary.retried) == (12, 0, 0)
    assert_same_run(local, tmp_path / "ray")
    assert len({r["worker"] for r in manifest_lines(tmp_path / "ray")}) == 2
    assert {r["threads"] for r in manifest_lines(tmp_path / "ray")} == {1}


def test_ray_actors_take_the_threads_asked_for(ray_session, tmp_path: Path, prior: Prior) -> None:
    data = tmp_path / "data"
    make_images(data, 2)
    run_batch(list_inputs(data), tmp_path / "ray", settings(), prior, backend=make_backend(0, use_ray=True, threads=2))
    rows = manifest_lines(tmp_path / "ray")  # one actor per 2 of the session's 2 CPUs: one
    assert {r["threads"] for r in rows} == {2} and len({r["worker"] for r in rows}) == 1
    with pytest.raises(BatchError, match="fewer than the 3 threads"):
        run_batch(list_inputs(data), tmp_path / "too-many", settings(), prior,
                  backend=make_backend(use_ray=True, threads=3))


def test_ray_worker_that_dies_mid_task_is_retried(ray_session, tmp_path: Path, prior: Prior,
                                                   dozen: tuple[Path, Path]) -> None:
    data, local = dozen
    marker = tmp_path / "killed"
    backend = make_backend(workers=2, use_ray=True, kill_once=f"img03.png:{marker}")
    events = []
    summary = run_batch(list_inputs(data), tmp_path / "ray", settings(), prior, backend=backend,
                        batch_size=1, on_event=events.append)
    assert marker.is_file()
    assert (summary.ok, summary.failed, summary.retried) == (12, 0, 1)
    assert [e.name for e in events if e.kind == "retry"] == ["img03.png"]
    rows = manifest_lines(tmp_path / "ray")
    assert sorted(r["name"] for r in rows) == [f"img{i:02d}.png" for i in range(12)]  # each exactly once
    assert {r["name"]: r["attempt"] for r in rows}["img03.png"] == 2
    assert len(list((tmp_path / "ray" / OUTPUTS_FOLDER).iterdir())) == 12
    assert_same_run(local, tmp_path / "ray")
