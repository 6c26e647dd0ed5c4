"""RunLogger: one scalar row per logged step, to DIR/train.csv and TensorBoard (DIR/tb/).

Notable:
* CSV floats are written with `repr`, which round-trips exactly: an interrupted-then-resumed run
  and an uninterrupted one can be compared bit for bit from their CSVs.
* Columns are the union of every key seen so far; a row that brings a new key (a hook's eval
  metric, a log that starts later) rewrites the file atomically with the wider header.
* On resume the CSV is cut back to the rows at or before the checkpoint step (rows a killed run
  wrote after its last checkpoint are recomputed), and TensorBoard's `purge_step` hides the
  corresponding stale events.
* Rows are flushed as they are written, so a killed run keeps everything it logged.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path

from worldstream.utils.io import atomic_path

CSV_NAME = "train.csv"
TB_DIR = "tb"


class RunLogger:
    def __init__(self, out_dir: str | os.PathLike, *, csv_enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.out_dir = Path(out_dir)
        self.csv_path = self.out_dir / CSV_NAME
        self.csv_enabled = csv_enabled
        self._header: list[str] = []
        self._file = None
        self._writer = None
        if csv_enabled:
            if self.csv_path.exists():
                rows, header = _read_rows(self.csv_path)
                if resume_step is None:
                    raise ValueError(f"{self.csv_path} already exists: pass --resume to continue that run "
                                     "or choose another --out")
                self._header = header
                self._rewrite([r for r in rows if _step_of(r) is not None and _step_of(r) <= resume_step])
            self._file = open(self.csv_path, "a", newline="")  # noqa: SIM115 (closed in close())
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(log_dir=str(self.out_dir / TB_DIR), purge_step=purge)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """One row: `step` plus scalar values (non-finite values are logged as nan/inf)."""
        if self._file is not None:
            new = [k for k in values if k not in self._header]
            if new or not self._header:
                rows, _ = _read_rows(self.csv_path) if self.csv_path.stat().st_size else ([], [])
                self._header = ["step"] + [k for k in self._header if k != "step"] + new
                self._file.close()
                self._rewrite(rows)
                self._file = open(self.csv_path, "a", newline="")  # noqa: SIM115
            row = {"step": str(step), **{k: _fmt(v) for k, v in values.items()}}
            self._file.write(",".join(_csv_cell(row.get(k, "")) for k in self._header) + "\n")
            self._file.flush()
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, float(v), global_step=step)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._header, extrasaction="ignore", restval="",
                               lineterminator="\n")
            w.writeheader()
            w.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a train.csv as dicts of strings (empty string = not logged at that step)."""
    return _read_rows(Path(path))[0]


def _read_rows(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        # a row cut short by a killed writer has None cells: drop it
        rows = [r for r in reader if None not in r.values() and None not in r]
    return rows, header


def _step_of(row: Mapping[str, str]) -> int | None:
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None


def _fmt(v: float) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    v = float(v)
    return repr(v) if math.isfinite(v) else str(v)


def _csv_cell(s: str) -> str:
    return f'"{s}"' if any(c in s for c in ',"\n') else s
