"""``metrics.csv`` plus TensorBoard scalars for a run folder, shared by ``mrcom train`` and ``mrcom adapt``.

One row per log event (empty cells for absent fields). On resume, rows newer than the restored step are
dropped, so the log matches the restored run (the kept rows are written to a new file that replaces the old
one, so a crash at that moment loses nothing), and TensorBoard events after it are purged.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mrcom_core.files import atomic_path


class MetricsLog:
    """Args:
        run_dir: the run folder (``metrics.csv`` and ``tb/`` go there).
        fields: the CSV columns; the first one is the step counter.
        step: the step the run starts (or resumes) at.
    """

    def __init__(self, run_dir: Path | str, fields: list[str], step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        run_dir = Path(run_dir)
        self.fields, self.path = list(fields), run_dir / "metrics.csv"
        rows = []
        if step and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r[self.fields[0]]) <= step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            kept = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            kept.writeheader()
            kept.writerows(rows)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore")
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=step or None)

    def write(self, step: int, row: dict[str, float], scalars: dict[str, float] | None = None) -> None:
        """Append ``row`` at ``step`` to the CSV and ``scalars`` (TensorBoard tag → value) to TensorBoard."""
        self.writer.writerow({self.fields[0]: step, **row})
        self.file.flush()
        for tag, value in (scalars or {}).items():
            self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()
