"""Where scores are written: a staging location beside OUTPUT, moved into place only when the job succeeded.

A failed or interrupted job leaves no OUTPUT (and an existing one untouched): the staging directory
is removed, or, after a crash, removed by the next job writing the same OUTPUT (the same rules as a
bundle's staging, :func:`paritybundle.bundle.writer.remove_stale_staging`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..bundle.writer import make_staging, publish
from ..errors import BundleExistsError, UsageError
from .report import REPORT_NAME, ScoreReport


def may_write(target: Path, *, force: bool, single_file: bool) -> None:
    """Refuse an OUTPUT that exists (without ``force``) or is of the other kind, before any work is done.

    Raises:
        BundleExistsError, UsageError: one sentence each (exit 2).
    """
    if (target.exists() or target.is_symlink()) and not force:
        raise BundleExistsError(f"{target} already exists; pass --force to replace it.")
    if target.exists() and single_file != target.is_file():
        kind = "a file" if single_file else "a folder"
        raise UsageError(f"{target} exists and is not {kind}; choose another output path.")


def refuse_overlap(target: Path, **protected: str | os.PathLike[str]) -> None:
    """Refuse an OUTPUT that is, contains or lies inside one of ``protected`` (what the job reads: its
    input, its bundle), judged on resolved paths: ``--force`` replaces OUTPUT, and must never replace
    what the scores are made from.

    Raises:
        UsageError: naming both (exit 2).
    """
    out = target.resolve()
    for what, path in protected.items():
        source = Path(path).resolve()
        if out == source or out in source.parents:
            relation = "is" if out == source else "contains"
            raise UsageError(
                f"-o {target} {relation} the job's {what} ({path}); writing the scores there would "
                f"destroy it. Choose an output path outside it."
            )
        if source in out.parents:
            raise UsageError(
                f"-o {target} lies inside the job's {what} ({path}); the scores would change it. "
                "Choose an output path outside it."
            )


class StagedOutput:
    """OUTPUT's staging directory; :meth:`publish` moves the scores into place, :meth:`abandon` drops them.

    ``single_file``: OUTPUT is one Parquet file (``*.parquet``, the local engine); otherwise a folder of
    part files with the job's report in it.
    """

    def __init__(self, target: str | os.PathLike[str], *, force: bool, single_file: bool) -> None:
        self.target, self.force, self.single_file = Path(target), force, single_file
        may_write(self.target, force=force, single_file=single_file)
        self.staging, self._lock = make_staging(self.target)

    @property
    def data(self) -> Path:
        """Where the engine writes: the one file, or the folder of part files."""
        return self.staging / self.target.name if self.single_file else self.staging

    def publish(self, report: ScoreReport) -> None:
        try:
            if self.single_file:
                if self.target.exists() and not self.force:
                    raise BundleExistsError(f"{self.target} appeared while scoring; nothing was replaced.")
                os.replace(self.data, self.target)
                shutil.rmtree(self.staging, ignore_errors=True)
            else:
                (self.staging / REPORT_NAME).write_text(report.model_dump_json(indent=2) + "\n")
                publish(self.staging, self.target, force=self.force)
        finally:
            os.close(self._lock)

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            os.close(self._lock)
        except OSError:
            pass
