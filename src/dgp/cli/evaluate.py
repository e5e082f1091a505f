"""``dgp priors evaluate``: a prior's quality measured with a classifier on a labelled test folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

from dgp.cli.priors import priors_app
from dgp.defaults import DEFAULT_PRIOR

console = Console(stderr=True)


def _markdown(name: str, data_dir: Path, figures: dict, classifier: str, seconds: float) -> str:
    lines = [
        f"# Prior `{name}`: measured quality",
        "",
        f"Measured by `dgp priors evaluate {name} --data {data_dir}` with the classifier `{classifier}`, "
        f"{figures['samples_per_class']} samples per class (seed {figures['seed']}) against "
        f"{figures['real_images']} test images, in {seconds:.0f} s.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| classifier accuracy on class-conditional samples (mean) | {100 * figures['conditional_sample_accuracy']:.1f}% |",
        f"| classifier accuracy on the real test images (reference) | {100 * figures['classifier_accuracy_on_real']:.1f}% |",
        f"| Fréchet distance of classifier penultimate features, samples vs test (not FID) | "
        f"{figures['frechet_classifier_distance']:.2f} |",
        "",
        "| class | sample accuracy |",
        "| --- | --- |",
    ]
    lines += [f"| {c} | {100 * a:.1f}% |" for c, a in figures["conditional_sample_accuracy_per_class"].items()]
    lines += ["", "![samples, one row per class](samples.png)", ""]
    return "\n".join(lines)


@priors_app.command("evaluate", epilog="Example: dgp priors evaluate cifar10 --data cifar10/test -o docs/prior-cifar10")
def evaluate_command(
    prior: str = typer.Argument(DEFAULT_PRIOR, help="Prior name or folder."),
    data: Path = typer.Option(..., "--data", help="Labelled test folder (one sub-folder per class, named as the "
                              "prior's classes)."),
    output: Path = typer.Option(Path("docs/prior-evaluation"), "-o", "--output", help="Folder for the report."),
    classifier: str = typer.Option("cifar10", "--classifier", help="Classifier name or folder."),
    per_class: int = typer.Option(500, "--per-class", min=2, help="Samples per class."),
    seed: int = typer.Option(0, "--seed"),
    update_card: bool = typer.Option(False, "--update-card", help="Also write the figures into the prior "
                                     "folder's card.json."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Classifier accuracy on class-conditional samples, a classifier-feature Fréchet distance, a sample grid."""
    import torch

    from dgp.classifier import load_classifier
    from dgp.data import ImageFolder
    from dgp.evaluation import class_samples, evaluate_prior
    from dgp.imageio import atomic_write, save_grid
    from dgp.priors.registry import get_spec, list_priors, load_prior

    start = time.perf_counter()
    p = load_prior(prior, device=device)
    model, card = load_classifier(classifier, device=device)
    folder = ImageFolder.scan(data)
    unknown = [n for n in folder.class_names if n not in p.class_names]
    if unknown:
        raise ValueError(f"{data} has classes the prior does not know: {', '.join(unknown)} "
                         f"(the prior's classes: {', '.join(p.class_names)})")
    images, labels = folder.load(p.resolution)
    labels = torch.tensor([p.class_names.index(folder.class_names[int(i)]) for i in labels])
    result = evaluate_prior(p, model, images, labels, per_class=per_class, seed=seed)
    figures = result.as_dict()
    seconds = time.perf_counter() - start
    output.mkdir(parents=True, exist_ok=True)
    grid, _ = class_samples(p, 10, seed=seed)
    save_grid(grid, output / "samples.png", nrow=10)
    record = {"prior": p.name, "data": str(data), "classifier": classifier, "seconds": round(seconds, 1),
              **figures}
    atomic_write(output / "evaluation.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    atomic_write(output / "evaluation.md",
                 lambda tmp: Path(tmp).write_text(_markdown(p.name, data, figures, classifier, seconds)))
    if update_card:
        spec_folder = get_spec(prior).folder if prior in {s.name for s in list_priors()} else Path(prior)
        if spec_folder is None:
            raise ValueError(f"--update-card needs a prior folder; {prior} is a released prior")
        card_path = spec_folder / "card.json"
        data_card = json.loads(card_path.read_text())
        data_card["evaluation"] = {k: v for k, v in record.items() if k != "prior"}
        atomic_write(card_path, lambda tmp: Path(tmp).write_text(json.dumps(data_card, indent=2) + "\n"))
    console.print(f"sample accuracy {100 * figures['conditional_sample_accuracy']:.1f}% "
                  f"(real {100 * figures['classifier_accuracy_on_real']:.1f}%), Fréchet classifier distance "
                  f"{figures['frechet_classifier_distance']:.2f}; wrote {output}/", highlight=False)
