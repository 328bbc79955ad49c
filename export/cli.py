"""`fraudscore export`: registered on the command line by the `fraudscore.commands` entry point.

This module stays light (Typer only): TensorFlow and tf2onnx are imported inside the command, so
`fraudscore --help` answers at once and the runtime package never imports this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fraudscore.console import report, reports_errors


def register(app: typer.Typer) -> None:
    """Add `fraudscore export` to the command line."""
    app.command(name="export")(reports_errors(export))


def export(
    run: Annotated[Path, typer.Option("--run", help="Run directory written by `fraudscore train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to create (model.onnx + manifest.json).")],
    opset: Annotated[int, typer.Option(help="ONNX opset (tf2onnx 1.17 converts 13-18).")] = 17,
    tolerance: Annotated[float, typer.Option(help="Largest allowed |Keras - ONNX Runtime| on the held-out rows.")] = 1e-5,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Convert a trained Keras model to an ONNX bundle, checked against Keras on held-out rows."""
    from fraudscore.atomic import check_new_directory

    check_new_directory(out)  # before TensorFlow loads: a taken --out fails in a second, not after the work
    from fraudscore.export.onnx import export_bundle

    result = export_bundle(run, out, opset=opset, tolerance=tolerance)
    if not quiet:
        report(
            f"wrote {result.path}: parity over {result.rows_checked:,} held-out rows, max |Keras - ORT| "
            f"{result.max_abs_diff:.2g} (row {result.worst_row}); {result.seconds:.1f} s"
        )
