"""``bundle score``: batch scoring with a parity gate on every worker (local, Ray or Spark)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import EXIT_OK, ParityBundleError
from .app import (
    BundleArg,
    EnvPolicyOption,
    JsonOption,
    KeyOption,
    RequireSignatureOption,
    command,
    emit_report,
    out,
    write_text,
)
from .app import public_key as resolve_public_key
from .checking import _show_progress


@command("score")
def score_command(
    bundle: BundleArg,
    input: Annotated[
        Path,
        typer.Argument(
            help="Parquet (a file or a folder of them) or CSV: one column per model input.", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Where the scores go (Parquet): a folder of part files, or one file ending in .parquet with --engine local.",
        ),
    ],
    engine: Annotated[
        str, typer.Option("--engine", help="local (this process, streaming), ray (Ray Data) or spark (mapInPandas).")
    ] = "local",
    keep: Annotated[
        list[str] | None, typer.Option("--keep", help="An input column to copy beside the scores (repeatable).")
    ] = None,
    id_column: Annotated[
        str | None, typer.Option("--id-column", help="An input column to carry as the row id (default: row_id, made).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUTPUT if it exists (only once the job succeeded).")
    ] = False,
    batch_rows: Annotated[
        int, typer.Option("--batch-rows", help="Rows per batch a worker scores at once (memory is bounded by it).")
    ] = 65_536,
    workers: Annotated[int, typer.Option("--workers", help="With --engine ray: gated actors.")] = 2,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="With --engine ray: the cluster (default: start a local Ray).")
    ] = None,
    spark_master: Annotated[
        str | None, typer.Option("--spark-master", help="With --engine spark: the master URL (default: local[*]).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="ONNX Runtime intra-op threads per worker (default: as validated).")
    ] = None,
    env_policy: EnvPolicyOption = "strict",
    json_path: JsonOption = None,
    key: KeyOption = None,
    require_signature: RequireSignatureOption = False,
) -> int:
    """Score a table with the bundle; every worker proves parity on its own node before it scores a row."""
    from ..commands.score import score
    from ..reports.score_table import render_score
    from ..runtime.session import SessionOverrides

    settings = SessionOverrides(intra_op_num_threads=threads) if threads is not None else None
    try:
        report = score(
            bundle,
            input,
            output,
            engine=engine,
            keep=keep or [],
            id_column=id_column,
            force=force,
            settings=settings,
            env_policy=env_policy,
            public_key=resolve_public_key(key, require_signature),
            batch_rows=batch_rows,
            workers=workers,
            ray_address=ray_address,
            spark_master=spark_master,
            progress=_show_progress(json_path),
        )
    except ParityBundleError as exc:
        failed = getattr(exc, "report", None)
        if failed is not None:  # which worker failed, where, and why: for the job's owner and for CI
            if json_path is not None and str(json_path) != "-":
                from ..reports.json_report import to_json

                write_text(json_path, to_json(failed))
            render_score(failed, out)
        raise
    emit_report(report, json_path, render_score)
    return EXIT_OK
