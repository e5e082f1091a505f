"""Top-1 accuracy of a classifier (the shipped CIFAR-10 one by default) on a labelled test folder.

Usage::

    python benchmarks/classifier_accuracy.py --data /path/to/cifar10/test [--classifier cifar10] [--no-flip]
        [--json results.json] [--threads N]

``--data`` is the unpacked ``test/`` folder of ``../shared/data/cifar10-jpg.tar.gz`` (or the environment
variable ``DGP_CIFAR10_TEST``). Prints per-class and mean accuracy, with and without flip averaging, and the
figure recorded in the classifier's card for comparison. Exit status 2 for bad input, with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("DGP_CIFAR10_TEST"),
                        help="labelled test folder (default: $DGP_CIFAR10_TEST)")
    parser.add_argument("--classifier", default=None, help="shipped name or folder (default: cifar10)")
    parser.add_argument("--no-flip", action="store_true", help="skip the flip-averaged figure")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    from dgp.classifier import ClassifierError, accuracy_by_class, card_class_names, load_classifier, \
        predict_logits
    from dgp.data import ImageFolder

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.data is None:
        return fail("give the test folder with --data DIR (or set DGP_CIFAR10_TEST)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, card = load_classifier(args.classifier, device=args.device)
        folder = ImageFolder.scan(args.data)
    except (ClassifierError, ValueError) as exc:
        return fail(str(exc))
    names = card_class_names(card, model.config.n_classes)
    if folder.class_names != names:
        return fail(f"{args.data} has classes {folder.class_names}, the classifier {names}")
    start = time.perf_counter()
    images, labels = folder.load(model.config.resolution)
    load_seconds = time.perf_counter() - start

    results = {}
    for flip in ([False] if args.no_flip else [False, True]):
        start = time.perf_counter()
        logits = predict_logits(model, images, flip=flip)
        top1, per_class = accuracy_by_class(logits, labels, len(names))
        results["flip_average" if flip else "plain"] = {
            "top1": round(top1, 4), "per_class": {n: round(a, 4) for n, a in zip(names, per_class)},
            "seconds": round(time.perf_counter() - start, 2)}

    columns = list(results)
    print(f"classifier: {args.classifier or 'cifar10 (shipped)'}; data: {args.data} ({len(labels)} images, "
          f"decoded in {load_seconds:.1f} s)")
    print(f"{'class':<12}" + "".join(f"{c:>14}" for c in columns))
    for n in names:
        print(f"{n:<12}" + "".join(f"{100 * results[c]['per_class'][n]:>13.2f}%" for c in columns))
    print(f"{'mean':<12}" + "".join(f"{100 * results[c]['top1']:>13.2f}%" for c in columns))
    recorded = card.get("accuracy", {})
    if recorded:
        print(f"card: top1 {100 * recorded.get('top1', float('nan')):.2f}% "
              f"(flip {100 * recorded.get('top1_flip_average', float('nan')):.2f}%) on {recorded.get('n_images')} "
              f"images")
    if args.json is not None:
        args.json.write_text(json.dumps({"data": str(args.data), "n_images": len(labels), **results}, indent=2)
                             + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
