"""``metrics.csv`` plus TensorBoard scalars for a run folder, shared by ``mrcom train`` and ``mrcom adapt``.

One row per log event (empty cells for absent fields). On resume, rows newer than the restored step are
dropped, so the log matches the restored run (the kept rows are written to a new file that replaces the old
one, so a crash at that moment loses nothing), and TensorBoard events after it are purged.

Both files are written in the calling thread and flushed with every row, so a write that fails (a full disk,
a file-size limit) is an ``OSError`` naming the file, raised where the row is logged.
"""

from __future__ import annotations

import csv
import itertools
import os
import socket
import time
from pathlib import Path

from mrcom_core.errors import UserInputError
from mrcom_core.io.files import atomic_path, writing

_files = itertools.count()  # tells apart the event files one process opens in the same second


class EventFile:
    """A TensorBoard event file (``DIR/events.out.tfevents.*``) of scalars, written synchronously.

    TensorBoard's own writer writes from a background thread, where a failed write is printed as a traceback
    and raised only at a later call; this one raises it (:func:`~mrcom_core.io.files.writing`) from
    :meth:`scalars`. ``purge_step``: events of earlier files at this step and later are hidden (a resumed
    run), as ``SummaryWriter(purge_step=…)`` does.
    """

    def __init__(self, folder: Path | str, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = Event, Summary
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                              f"{next(_files)}")
        self.file = open(self.path, "ab")
        self._records = RecordWriter(self.file)
        first = [Event(wall_time=time.time(), file_version="brain.Event:2")]
        if purge_step:
            first.append(Event(wall_time=time.time(), step=purge_step,
                               session_log=SessionLog(status=SessionLog.START)))
        try:
            self._write(first)
        except BaseException:
            self.close()
            raise

    def _write(self, events) -> None:
        with writing(self.path):
            for event in events:
                self._records.write(event.SerializeToString())
            self.file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Append one event holding ``values`` (tag → value) at ``step``."""
        if values:
            summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))
                                           for tag, value in values.items()])
            self._write([self._event(wall_time=time.time(), step=int(step), summary=summary)])

    def close(self) -> None:
        """Close the file; every event was flushed when written, so a failure here only repeats one that
        :meth:`scalars` already raised, and is not raised again."""
        try:
            self.file.close()
        except OSError:
            pass


class MetricsLog:
    """Args:
        run_dir: the run folder (``metrics.csv`` and ``tb/`` go there).
        fields: the first CSV columns; the first one is the step counter. A field a row brings that is not
            a column yet becomes one (the file is rewritten with the longer header), so every logged term
            reaches the CSV without a list of them kept anywhere.
        step: the step the run starts (or resumes) at.
    """

    def __init__(self, run_dir: Path | str, fields: list[str], step: int = 0):
        run_dir = Path(run_dir)
        self.fields, self.path = list(fields), run_dir / "metrics.csv"
        rows = self._rows_up_to(step) if step and self.path.exists() else []
        self.fields += [k for k in dict.fromkeys(k for row in rows for k in row) if k and k not in self.fields]
        self._rewrite(rows)
        try:
            self.tb = EventFile(run_dir / "tb", purge_step=step or None)
        except BaseException:
            self.file.close()
            raise

    def _rewrite(self, rows: list[dict]) -> None:
        """Replace the CSV by ``rows`` under the current header (atomically) and open it for appending."""
        with writing(self.path), atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            kept = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            kept.writeheader()
            kept.writerows(rows)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore")

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
        new = [k for k in row if k not in self.fields]
        if new:  # a term the log has no column for yet: the file gets the longer header, its rows kept
            self.file.close()
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            self.fields += new
            self._rewrite(rows)
        with writing(self.path):
            self.writer.writerow({self.fields[0]: step, **row})
            self.file.flush()
        self.tb.scalars(step, scalars or {})

    def close(self) -> None:
        """Close both files; as :meth:`EventFile.close`, a failure only repeats one :meth:`write` raised."""
        try:
            self.file.close()
        except OSError:
            pass
        self.tb.close()
