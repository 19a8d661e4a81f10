"""``metrics.csv`` plus TensorBoard scalars for a run folder, shared by ``mrcom train`` and ``mrcom adapt``.

One row per log event (empty cells for absent fields). On resume, rows newer than the restored step are
dropped, so the log matches the restored run (the kept rows are written to a new file that replaces the old
one, so a crash at that moment loses nothing), and TensorBoard events after it are purged.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mrcom_core.errors import UserInputError
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
        rows = self._rows_up_to(step) if step and self.path.exists() else []
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            kept = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            kept.writeheader()
            kept.writerows(rows)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore")
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=step or None)

    def _rows_up_to(self, step: int) -> list[dict]:
        """The log's rows up to ``step``. A last row cut short by a crash is dropped; a file that is not this
        run's log is one error line (the checkpoint itself is intact; delete the file to resume anyway)."""
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise UserInputError(f"{self.path} is not a readable metrics log ({e}); delete it to resume without "
                                 f"the old log") from None
        kept = []
        for i, row in enumerate(rows):
            try:
                at = int(row.get(self.fields[0]) or "")
            except ValueError:
                if i == len(rows) - 1:
                    continue  # the row a kill cut short
                raise UserInputError(f"{self.path} line {i + 2} has no valid {self.fields[0]!r}; delete the file to "
                                     f"resume without the old log") from None
            if at <= step:
                kept.append(row)
        return kept

    def write(self, step: int, row: dict[str, float], scalars: dict[str, float] | None = None) -> None:
        """Append ``row`` at ``step`` to the CSV and ``scalars`` (TensorBoard tag → value) to TensorBoard."""
        self.writer.writerow({self.fields[0]: step, **row})
        self.file.flush()
        for tag, value in (scalars or {}).items():
            self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()
