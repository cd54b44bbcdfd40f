"""Commands on files: compress, inspect, report (and the figures drawn after training)."""

from __future__ import annotations

from pathlib import Path

import click

from sws.cli import cli
from sws.runs.rundir import RunDir


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="HTML file to write [RUN_DIR/report.html].")
@click.option("--redraw", is_flag=True, help="Redraw the per-epoch frames and the animation "
              "even where they exist.")
def report_cmd(run_dir, out, redraw):
    """Write one self-contained HTML page: figures, metrics, command and settings."""
    from sws.viz.report import write_report
    click.echo(f"report: {write_report(run_dir, out, redraw)}")


def _draw_figures(run: RunDir):
    from sws.viz.figures import draw_run_figures
    figs = draw_run_figures(run.path)
    click.echo(f"figures: {len(figs)} files in {run.path / 'figures'}")


@cli.command("compress")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="File to write [RUN_DIR/model.sws].")
def compress_cmd(run_dir, out):
    """Write a run's post-processed network as a compressed .sws file."""
    _write_sws(run_dir, out or Path(run_dir) / "model.sws")


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
def inspect_cmd(path):
    """Per-layer bits of a .sws file and its compression rate three ways."""
    from sws.format.container import FormatError, _read_bytes
    from sws.format.stats import file_stats, format_stats
    data = _read_bytes(path)
    try:
        click.echo(format_stats(file_stats(data)))
    except FormatError as e:
        raise type(e)(f"{path}: {e}") from None


def _write_sws(run_dir, out: Path):
    from sws.runs.stages import compress_run
    from sws.format.stats import file_stats
    size = compress_run(run_dir, out)
    t = file_stats(out.read_bytes())["total"]
    click.echo(f"wrote {out}: {size} bytes, CR {t['cr_file']:.1f} from the file's bytes "
               f"({t['cr_paper']:.1f} by the paper's accounting, entropy bound {t['cr_entropy']:.1f})")
