"""The restoration and editing commands of ``dgp``, end to end, on a tiny prior saved as a prior folder.

Every command runs once as a user runs it (``python -m dgp ...`` in a subprocess; the runs go in parallel,
since each pays the interpreter and torch start-up) and the test reads what it wrote. Variants of the options
and the bad inputs run in-process through the same entry point, ``dgp.cli.main``, which is what turns a user
error into one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dgp.cli import main
from dgp.imageio import save_image
from dgp.priors.checkpoint import save_prior
from dgp.priors.registry import Prior

CLASSES = ["red", "green", "blue"]
PRESETS = {"iterations_scale": 0.01, "n_candidates": 4}  # 2 steps per stage, 4 search candidates
METRICS = {"psnr", "ssim", "observation_psnr", "observation_ssim"}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def check(self) -> Run:
        assert self.code == 0, f"exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr}"
        assert "Traceback" not in self.stderr
        return self


def assert_one_line_error(run: Run, *fragments: str) -> str:
    """Exit status non-zero, no traceback, and exactly one line on stderr: ``error: ...`` with ``fragments``."""
    assert run.code != 0
    assert "Traceback" not in run.stderr + run.stdout
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def no_temporary_leftovers(folder: Path) -> bool:
    """No hidden ``.NAME.*`` temporary file or folder (atomic writes and output folders) is left in ``folder``."""
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def run_json(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


# ---------------------------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, module_prior: Prior) -> Path:
    """A folder with a prior folder ``prior/`` and input images made by that prior."""
    root = tmp_path_factory.mktemp("cli")
    save_prior(root / "prior", module_prior.G, module_prior.D, card={"class_names": CLASSES, "presets": PRESETS})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = torch.randn(2, module_prior.G.dim_z, generator=g) * 0.4
        images = module_prior.G(z, module_prior.G.shared(torch.tensor([0, 2])))
    save_image(images[0], root / "clean.png")
    save_image(images[1], root / "other.png")
    # A non-square RGBA photo: centre-cropped and resized to 32x32, alpha composited on white.
    photo = Image.open(root / "clean.png").resize((48, 40)).convert("RGBA")
    photo.putalpha(200)
    photo.save(root / "photo.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 18:28] = 255  # white = missing
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))).save(root / "gradient_mask.png")
    wide = np.zeros((32, 64), np.uint8)
    wide[8:16, 28:36] = 255
    Image.fromarray(wide).save(root / "wide_mask.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (root / "empty_weights").mkdir()
    (root / "out").mkdir()
    return root


# ------------------------------------------------------------------------------ every command, a subprocess

SUBPROCESS_RUNS: dict[str, list[str]] = {
    "colorize": ["colorize", "clean.png", "--degrade", "--reference", "clean.png", "-o", "out/colorize"],
    "inpaint": ["inpaint", "clean.png", "--mask", "mask.png", "-o", "out/inpaint"],
    "super-resolve": ["super-resolve", "clean.png", "--factor", "4", "--class", "blue", "-o", "out/sr"],
    "denoise": ["denoise", "clean.png", "--sigma", "0.1", "--degrade", "--reference", "clean.png", "--seed", "3",
                "-o", "out/denoise"],
    "restore": ["restore", "clean.png", "-d", "down2+gray+hole", "--degrade", "--reference", "clean.png",
                "-o", "out/hybrid"],
    "reconstruct": ["reconstruct", "photo.png", "--class", "0", "-o", "out/reconstruct"],
    "jitter": ["jitter", "clean.png", "--sigmas", "0.3,0.5", "-n", "2", "-o", "out/jitter"],
    "transfer": ["transfer", "clean.png", "--to", "green", "--to", "2", "--class", "red", "-o", "out/transfer"],
    "morph": ["morph", "clean.png", "other.png", "--frames", "3", "-o", "out/morph"],
    "sample": ["sample", "--class", "red", "-n", "4", "-o", "out/grid.png"],
    "corrupt-input": ["colorize", "corrupt.png", "-o", "out/corrupt"],
}


def dgp_subprocess(cwd: Path, args: list[str]) -> Run:
    env = {k: v for k, v in os.environ.items() if k not in ("DGP_WEIGHTS", "DGP_DEBUG")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="120")
    done = subprocess.run([sys.executable, "-m", "dgp", *args, "--prior", "prior"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def runs(work: Path) -> dict[str, Run]:
    """Every entry of ``SUBPROCESS_RUNS``, run in ``work`` (a few at a time)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(dgp_subprocess, work, args) for name, args in SUBPROCESS_RUNS.items()}
        return {name: future.result() for name, future in futures.items()}


def test_colorize_writes_result_sheet_and_scores(work: Path, runs: dict[str, Run]) -> None:
    run = runs["colorize"].check()
    out = work / "out" / "colorize"
    assert sorted(p.name for p in out.iterdir()) == ["comparison.png", "observation.png", "reference.png",
                                                     "result.png", "run.json"]
    assert "wrote out/colorize/ (class" in run.stderr and "PSNR" in run.stderr
    observation = pixels(out / "observation.png")
    assert (observation[..., 0] == observation[..., 1]).all() and (observation[..., 1] == observation[..., 2]).all()
    assert image_size(out / "result.png") == (32, 32)
    assert image_size(out / "comparison.png") == (3 * 130 + 2, 132)  # observation, result, reference; 4x
    record = run_json(out)
    assert record["command"] == "colorize" and record["degradation"] == "gray" and record["degrade"] is True
    assert record["preset"] == "colorization" and record["seed"] == 0 and record["prior"] == "prior"
    assert [s["iterations"] for s in record["schedule"]["stages"]] == [2, 2, 3, 4, 3]  # the card's 0.01 scale
    assert record["schedule"]["n_candidates"] == 4 and record["steps"] == 14
    assert set(record["metrics"]) == METRICS and all(np.isfinite(v) for v in record["metrics"].values())
    assert record["class_name"] == CLASSES[record["class_id"]]
    assert {"search", "total"} <= set(record["timings"]) and record["environment"]["device"] == "cpu"
    assert no_temporary_leftovers(work / "out")


def test_inpaint_with_a_mask_file(work: Path, runs: dict[str, Run]) -> None:
    runs["inpaint"].check()
    out = work / "out" / "inpaint"
    assert {"result.png", "observation.png", "comparison.png", "run.json"} == {p.name for p in out.iterdir()}
    observation, clean = pixels(out / "observation.png"), pixels(work / "clean.png")
    assert (observation[4:12, 18:28] == 128).all()  # missing pixels are 0 in [-1, 1]: mid-gray
    outside = np.ones((32, 32), bool)
    outside[4:12, 18:28] = False
    assert np.abs(observation[outside] - clean[outside]).max() <= 1  # the rest is the input as given
    record = run_json(out)
    assert record["degradation"] == "mask" and record["mask"] == "mask.png" and record["preset"] == "inpainting"
    assert record["metrics"] == {} and record["reference"] is None  # nothing to score against


def test_super_resolve(work: Path, runs: dict[str, Run]) -> None:
    runs["super-resolve"].check()
    out = work / "out" / "sr"
    assert image_size(out / "observation.png") == (8, 8)  # the input, taken as the low-resolution image
    assert image_size(out / "result.png") == (32, 32)
    record = run_json(out)
    assert record["degradation"] == "down4" and record["preset"] == "sr"
    assert record["class_id"] == 2 and record["class_name"] == "blue"


def test_denoise(work: Path, runs: dict[str, Run]) -> None:
    runs["denoise"].check()
    out = work / "out" / "denoise"
    record = run_json(out)
    assert record["degradation"] == "noise0.1" and record["preset"] == "denoising" and record["seed"] == 3
    assert set(record["metrics"]) == METRICS
    noisy, clean = pixels(out / "observation.png"), pixels(work / "clean.png")
    assert 15 < np.abs(noisy - clean).mean() < 35  # sigma 0.1 of 255, clipped at the ends


def test_restore_a_chain(work: Path, runs: dict[str, Run]) -> None:
    runs["restore"].check()
    out = work / "out" / "hybrid"
    assert image_size(out / "observation.png") == (16, 16)
    observation = pixels(out / "observation.png")
    assert (observation[..., 0] == observation[..., 2]).all()
    assert (observation[6:10, 6:10] == 128).all()  # the centre hole, at half size
    record = run_json(out)
    assert record["degradation"] == "down2+gray+hole" and record["preset"] == "inpainting"
    assert set(record["metrics"]) == METRICS


def test_reconstruct_a_non_square_rgba_photo(work: Path, runs: dict[str, Run]) -> None:
    runs["reconstruct"].check()
    out = work / "out" / "reconstruct"
    assert image_size(out / "result.png") == (32, 32) and image_size(out / "observation.png") == (32, 32)
    record = run_json(out)
    assert record["degradation"] == "id" and record["preset"] == "reconstruction" and record["class_id"] == 0


def test_jitter_writes_one_row_per_sigma(work: Path, runs: dict[str, Run]) -> None:
    runs["jitter"].check()
    out = work / "out" / "jitter"
    assert sorted(p.name for p in out.iterdir()) == [
        "jitter.png", "reconstruction.png", "run.json",
        "sigma0.3_00.png", "sigma0.3_01.png", "sigma0.5_00.png", "sigma0.5_01.png"]
    assert image_size(out / "jitter.png") == (2 * 34 + 2, 2 * 34 + 2)
    record = run_json(out)
    assert record["sigmas"] == [0.3, 0.5] and record["per_sigma"] == 2
    assert record["schedule"]["name"] == "manipulation" and record["schedule"]["w_nll"] == 0.2
    assert not np.array_equal(pixels(out / "sigma0.3_00.png"), pixels(out / "sigma0.3_01.png"))


def test_transfer_writes_one_image_per_class(work: Path, runs: dict[str, Run]) -> None:
    runs["transfer"].check()
    out = work / "out" / "transfer"
    assert sorted(p.name for p in out.iterdir()) == ["0001_green.png", "0002_blue.png", "reconstruction.png",
                                                     "run.json", "transfer.png"]
    assert image_size(out / "transfer.png") == (3 * 34 + 2, 36)  # reconstruction, then the two classes
    record = run_json(out)
    assert record["targets"] == [1, 2] and record["class_id"] == 0


def test_morph_writes_frames_grid_and_gif(work: Path, runs: dict[str, Run]) -> None:
    runs["morph"].check()
    out = work / "out" / "morph"
    assert sorted(p.name for p in out.iterdir()) == ["frame_000.png", "frame_001.png", "frame_002.png",
                                                     "morph.gif", "morph.png", "run.json"]
    with Image.open(out / "morph.gif") as gif:
        assert gif.n_frames == 4  # 0 1 2 then back to 1
    record = run_json(out)
    assert record["frames"] == 3 and len(record["class_ids"]) == 2 and record["schedule"]["update_embed"]
    assert not np.array_equal(pixels(out / "frame_000.png"), pixels(out / "frame_002.png"))
    # Both images are reconstructed together (the batched engine): each as it would be alone, seed 0.
    from dgp.degradations import parse_degradation
    from dgp.imageio import load_image
    from dgp.pipeline import default_schedule
    from dgp.priors.registry import load_prior
    from dgp.reconstruct import DGPReconstructor

    prior = load_prior(str(work / "prior"))
    reconstructor = DGPReconstructor(prior, default_schedule(prior, "morphing"))
    degradation = parse_degradation("id", size=(prior.resolution, prior.resolution))
    for name, frame in (("clean.png", "frame_000.png"), ("other.png", "frame_002.png")):
        alone = reconstructor(load_image(work / name, prior.resolution), degradation, None,
                              torch.Generator().manual_seed(0))
        save_image(alone.image, work / "out" / f"alone-{name}")
        difference = np.abs(pixels(work / "out" / f"alone-{name}").astype(int) - pixels(out / frame).astype(int))
        assert difference.max() <= 2, name


def test_sample_to_a_grid(work: Path, runs: dict[str, Run]) -> None:
    run = runs["sample"].check()
    assert image_size(work / "out" / "grid.png") == (2 * 34 + 2, 2 * 34 + 2)
    assert "4 samples of class 0 'red'" in run.stderr


def test_a_failing_subprocess_prints_one_line(work: Path, runs: dict[str, Run]) -> None:
    assert runs["corrupt-input"].code == 1
    assert_one_line_error(runs["corrupt-input"], "cannot read image corrupt.png")
    assert not (work / "out" / "corrupt").exists() and no_temporary_leftovers(work / "out")


# ------------------------------------------------------------------------------------- variants, in-process


@pytest.fixture
def dgp(work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """``dgp(*args)`` runs ``dgp ARGS --prior <tiny prior>`` in this process (cwd: ``work``) and returns a Run."""
    monkeypatch.chdir(work)
    monkeypatch.delenv("DGP_WEIGHTS", raising=False)
    monkeypatch.delenv("DGP_DEBUG", raising=False)

    def call(*args: str, prior: str = "prior") -> Run:
        argv = ["dgp", *args] + (["--prior", prior] if prior else [])
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as info:
            main()
        captured = capsys.readouterr()
        return Run(info.value.code or 0, captured.out, captured.err)

    return call


@pytest.mark.parametrize("option,name", [(["--hole"], "hole"), (["--boxes", "2"], "boxes2"),
                                         (["--strokes"], "strokes")])
def test_inpaint_mask_options(work: Path, dgp, option: list[str], name: str) -> None:
    out = work / "out" / f"inpaint-{name}"
    dgp("inpaint", "clean.png", *option, "--degrade", "--reference", "clean.png", "-o", str(out)).check()
    record = run_json(out)
    assert record["degradation"] == name and set(record["metrics"]) == METRICS
    observation = pixels(out / "observation.png")
    assert (observation == 128).all(axis=-1).any()  # some pixels are missing
    if name == "hole":
        assert (observation[11:21, 11:21] == 128).all()  # the paper's hole: side 32 // 3 = 10, centred


def test_mask_on_a_non_square_photo_stays_aligned(work: Path, dgp) -> None:
    """The photo is centre-cropped to a square; its mask (here at half size) must be cropped the same way."""
    Image.open(work / "clean.png").resize((48, 32)).save(work / "wide.png")
    mask = np.zeros((16, 24), np.uint8)
    mask[5:10, 12:16] = 255  # at full size: rows 10..20, columns 24..32, i.e. 16..24 after the crop
    Image.fromarray(mask).save(work / "wide_half_mask.png")
    out = work / "out" / "inpaint-wide"
    dgp("inpaint", "wide.png", "--mask", "wide_half_mask.png", "-o", str(out)).check()
    missing = (pixels(out / "observation.png") == 128).all(axis=-1)
    expected = np.zeros((32, 32), bool)
    expected[10:20, 16:24] = True
    assert (missing[expected]).all() and not missing[~expected].any()


def test_inpaint_mask_choices_are_exclusive(dgp) -> None:
    assert_one_line_error(dgp("inpaint", "clean.png", "--hole", "--strokes", "-o", "out/x"),
                          "choose one of --mask, --hole, --boxes, --strokes")


def test_restore_gray_and_hole(work: Path, dgp) -> None:
    out = work / "out" / "gray-hole"
    dgp("restore", "clean.png", "-d", "gray+hole", "--degrade", "-o", str(out)).check()
    observation = pixels(out / "observation.png")
    assert (observation[..., 0] == observation[..., 1]).all() and (observation[11:21, 11:21] == 128).all()
    assert run_json(out)["degradation"] == "gray+hole" and run_json(out)["metrics"] != {}  # --degrade: scored


def test_sample_to_a_folder(work: Path, dgp) -> None:
    dgp("sample", "--class", "green", "-n", "3", "-o", "out/samples").check()
    assert sorted(p.name for p in (work / "out" / "samples").iterdir()) == [
        "green_0000.png", "green_0001.png", "green_0002.png"]


def test_default_output_folder_is_named_after_the_input(work: Path, dgp) -> None:
    dgp("reconstruct", "other.png").check()
    assert (work / "other-reconstruct" / "result.png").is_file()


def test_existing_output_is_refused_then_replaced_with_overwrite(work: Path, dgp) -> None:
    out = work / "out" / "again"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert_one_line_error(dgp("colorize", "clean.png", "-o", str(out)), "exists (use --overwrite to replace it)")
    assert (out / "old.txt").read_text() == "old"
    dgp("colorize", "clean.png", "-o", str(out), "--overwrite").check()
    assert not (out / "old.txt").exists() and (out / "result.png").is_file()
    grid = work / "out" / "again.png"
    dgp("sample", "--class", "0", "-n", "1", "-o", str(grid)).check()
    assert_one_line_error(dgp("sample", "--class", "0", "-n", "1", "-o", str(grid)), "exists")
    dgp("sample", "--class", "0", "-n", "2", "-o", str(grid), "--overwrite").check()
    assert image_size(grid) == (2 * 34 + 2, 36)
    assert no_temporary_leftovers(work / "out")


def test_a_run_that_fails_while_writing_leaves_nothing_behind(work: Path, dgp,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import dgp.cli.restore as commands

    def write_then_fail(folder: Path, restoration) -> None:  # noqa: ANN001
        save_image(restoration.output, folder / "result.png")
        raise OSError("disk full")

    monkeypatch.setattr(commands, "_write_restoration", write_then_fail)
    out = work / "out" / "failed"
    assert_one_line_error(dgp("reconstruct", "clean.png", "-o", str(out)), "disk full")
    assert not out.exists()
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert_one_line_error(dgp("reconstruct", "clean.png", "-o", str(out), "--overwrite"), "disk full")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]  # the previous output is kept
    assert no_temporary_leftovers(work / "out")


BAD_INPUTS = {
    "missing image": (["colorize", "nothere.png"], "image not found: nothere.png"),
    "corrupt reference": (["colorize", "clean.png", "--reference", "corrupt.png"], "cannot read image corrupt.png"),
    "non-binary mask": (["inpaint", "clean.png", "--mask", "gradient_mask.png"], "mask image does not look binary"),
    "missing mask": (["inpaint", "clean.png", "--mask", "nomask.png"], "mask image not found: nomask.png"),
    "mask of another shape": (["inpaint", "clean.png", "--mask", "wide_mask.png"],
                              "mask wide_mask.png is 64x32 pixels but image clean.png is 32x32"),
    "mask without a mask token": (["restore", "clean.png", "-d", "gray", "--mask", "mask.png"],
                                  "--mask is given but the degradation 'gray' has no 'mask' token"),
    "unknown class": (["colorize", "clean.png", "--class", "purple"], "unknown class 'purple'"),
    "class out of range": (["transfer", "clean.png", "--to", "7"], "class id 7 is out of range"),
    "bad factor": (["super-resolve", "clean.png", "--factor", "3"], "--factor must be 2, 4 or 8, got 3"),
    "bad degradation": (["restore", "clean.png", "-d", "gray+blur"], "unknown degradation 'blur'"),
    "bad sigma": (["denoise", "clean.png", "--sigma", "2"], "--sigma must be in (0, 1]"),
    "bad device": (["colorize", "clean.png", "--device", "warp9"], "unknown device 'warp9'"),
    "bad sigmas": (["jitter", "clean.png", "--sigmas", "0.3,x"], "--sigmas must be numbers"),
    "several images": (["colorize", "clean.png", "clean.png"], "`dgp batch` restores several at once"),
}


@pytest.mark.parametrize("args,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_gives_one_line_error(work: Path, dgp, args: list[str], message: str) -> None:
    out = work / "out" / "bad"
    assert_one_line_error(dgp(*args, "-o", str(out)), message)
    assert not out.exists() and no_temporary_leftovers(work / "out")


@pytest.mark.parametrize("prior,extra,message", [
    ("nope", [], "unknown prior 'nope'"),
    ("biggan-imagenet-128", ["--weights", "empty_weights"], "G_ema_128.pth, D_128.pth not found in empty_weights"),
    ("missing_folder/", [], "prior folder not found: missing_folder/"),
    ("empty_weights", [], "G_ema.safetensors, D.safetensors, card.json not found in empty_weights"),
])
def test_bad_prior_gives_one_line_error(work: Path, dgp, prior: str, extra: list[str], message: str) -> None:
    assert_one_line_error(dgp("colorize", "clean.png", "-o", "out/bad", *extra, prior=prior), message)
    assert not (work / "out" / "bad").exists()


def test_gpu_device_without_cuda_is_refused(dgp) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    assert_one_line_error(dgp("colorize", "clean.png", "--device", "cuda", "-o", "out/bad"),
                          "no CUDA device is available")


@pytest.mark.parametrize("command", ["colorize", "inpaint", "super-resolve", "denoise", "restore", "reconstruct",
                                     "jitter", "transfer", "morph", "sample"])
def test_help_shows_an_example(dgp, command: str) -> None:
    run = dgp(command, "--help", prior="")
    assert run.code == 0 and "Example" in run.stdout


def test_help_and_usage_errors_do_not_load_torch(tmp_path: Path) -> None:
    # `dgp --help` and a mistyped command line answer without importing torch (1.5 s of the 1.7 s they took)
    probe = ("import sys\n"
             "from dgp.cli import main\n"
             "sys.argv = ['dgp', *sys.argv[1:]]\n"
             "try:\n"
             "    main()\n"
             "except SystemExit as exit:\n"
             "    print('exit', exit.code, 'torch' in sys.modules)\n")
    for args, code in ((["--help"], 0), (["colorize", "--help"], 0), (["batch", "--help"], 0),
                       (["bench", "quality", "--help"], 0), (["colorize"], 2), (["colorize", "a.png", "b.png"], 2),
                       (["colorize", "a.png", "--seed", "x"], 2)):
        done = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.stdout.strip().splitlines()[-1] == f"exit {code} False", (args, done.stdout, done.stderr)
