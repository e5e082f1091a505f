"""The manifest of a batch run: one JSON line per image, appended as images finish.

A row is appended (and flushed to disk) after the image's output file is in place, so the manifest never
claims a file that is not there. A rerun reads the manifest back (the last row of a name wins; a line cut
short by a crash is ignored) and :meth:`Manifest.compact` rewrites it atomically with one row per image.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from dgp.imageio import atomic_write

MANIFEST_NAME = "manifest.jsonl"

Status = Literal["ok", "failed"]


@dataclass
class Row:
    """What happened to one image.

    Attributes:
        name: the image's name (see :class:`dgp.batch.inputs.BatchInput`).
        status: ``"ok"`` or ``"failed"``.
        input: the input file.
        output: the restored file, relative to the output folder (``None`` when failed).
        seed: the image's seed (derived from the run's seed and the name), for its degradation's random draws;
            its latent search draws from the run's seed.
        class_id: class used by the restoration.
        metrics: PSNR/SSIM against the reference, when there is one.
        timings: seconds: ``load``, ``restore`` (with ``search``, ``stage1``...), ``write``.
        error: why it failed (``None`` when ok).
        attempt: how many times this image has been tried, over all runs and retries.
        worker: which worker restored it (``host:pid``).
        batch: images restored together with it by the batched engine (1: on its own).
        threads: torch's intra-op threads in its worker (float rounding, so the result, depends on it).
        finished: UTC time the row was written (ISO 8601).
    """

    name: str
    status: Status
    input: str
    output: str | None = None
    seed: int | None = None
    class_id: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    attempt: int = 1
    worker: str | None = None
    batch: int = 1
    threads: int | None = None
    finished: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Manifest:
    """The JSON-lines manifest of an output folder (``OUT/manifest.jsonl``)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / MANIFEST_NAME

    def read(self) -> dict[str, Row]:
        """The last row of every name; unparsable lines (a line cut short by a crash) are skipped."""
        rows: dict[str, Row] = {}
        if not self.path.is_file():
            return rows
        with self.path.open("r", encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    data = json.loads(line)
                    row = Row.from_dict(data)
                except (ValueError, TypeError):
                    continue
                rows[row.name] = row
        return rows

    def append(self, row: Row) -> None:
        """Append one row and push it to disk (one ``write`` of a whole line)."""
        if not row.finished:
            row.finished = utc_now()
        line = (row.to_json() + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def compact(self, rows: Iterable[Row] | None = None) -> dict[str, Row]:
        """Rewrite the manifest atomically with one row per name, sorted by name; returns those rows."""
        current = self.read() if rows is None else {row.name: row for row in rows}
        if not current and not self.path.exists():
            return current
        text = "".join(current[name].to_json() + "\n" for name in sorted(current))
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return current
