"""Batch runs: many images restored into one folder, resumable, on local processes or a Ray cluster.

* :mod:`dgp.batch.inputs`: a folder, glob or list file -> named images;
* :mod:`dgp.batch.manifest`: the JSON-lines manifest, one row per image;
* :mod:`dgp.batch.runner`: the driver, per-image seeds, local backends;
* :mod:`dgp.batch.ray_backend`: Ray actors (needs the ``distributed`` extra).
"""

from dgp.batch.inputs import BatchInput, list_inputs
from dgp.batch.manifest import Manifest, Row
from dgp.batch.runner import (
    BatchError,
    BatchEvent,
    BatchSettings,
    BatchSummary,
    auto_batch_size,
    image_seed,
    make_backend,
    run_batch,
)

__all__ = ["BatchError", "BatchEvent", "BatchInput", "BatchSettings", "BatchSummary", "Manifest", "Row",
           "auto_batch_size", "image_seed", "list_inputs", "make_backend", "run_batch"]
