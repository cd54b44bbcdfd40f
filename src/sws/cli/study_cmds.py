"""Studies: the Table 1 benchmark and the hyper-parameter search."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sws.cli import cli, data_option, quiet_option
from sws.zoo.models import MODELS


@cli.group("bench")
def bench_group():
    """Benchmarks that reproduce the paper's results."""


@bench_group.command("table1", context_settings={"ignore_unknown_options": True,
                                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_table1_cmd(args):
    """Table 1: soft weight-sharing and the baselines on the LeNets
    (options: sws bench table1 --help)."""
    from sws.study.table1 import main as table1_main
    rc = table1_main(list(args))
    if rc:
        sys.exit(rc)


@cli.group("search")
def search_group():
    """Hyper-parameter search (Optuna): validation error against CR from the file's bytes.

    'sws search run OUT' starts or resumes a study; 'sws search report OUT' prints
    its Pareto front and plots it.
    """


def _search_space_epilog() -> str:
    from sws.study.search import space_help
    return ("\b\nSearched parameters (NAME RANGE, narrow with --range / --choice):\n"
            + "\n".join(f"  {row}" for row in space_help().splitlines()))


@search_group.command("run", epilog=_search_space_epilog())
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--trials", type=int, required=True,
              help="Complete trials the study should hold; run again to resume, or with a larger "
                   "number to extend it.")
@click.option("--n-workers", type=int, default=1, show_default=True,
              help="Worker processes on this machine, all on one study.")
@click.option("--storage", default=None,
              help="Where the study lives: an SQLAlchemy URL shared by several machines (e.g. "
                   "postgresql+psycopg://user@host/db), or journal[:PATH] (Optuna's journal file, for a "
                   "shared filesystem) [sqlite:///OUT/study.db].")
@click.option("--study-name", default=None, help="Study name in the storage [OUT's name].")
@click.option("--model", default=None,
              help=f"A reference net ({', '.join(MODELS)}) or PKG.MODULE:FUNCTION [tutorial-conv].")
@click.option("--data", default=None, metavar="PKG.MODULE:FUNCTION",
              help="Your data function returning (train, val, test); its validation set scores trials [MNIST].")
@click.option("--budget/--no-budget", default=None,
              help="Each trial keeps its best state within the accuracy budget (as 'sws run') [--budget].")
@click.option("--max-error-increase", type=float, default=None, metavar="POINTS",
              help="The trials' accuracy budget [0.3].")
@click.option("--pretrain-epochs", type=int, default=None, help="Epochs of the shared pretraining [10].")
@click.option("--train-subset", type=int, default=None, help="Use the first N training images [all].")
@click.option("--val-size", type=int, default=None,
              help="Training images held out to score trials; the test set is never used [10000].")
@click.option("--holdout-size", type=int, default=None,
              help="Set aside N more training images that no trial trains or is chosen on; each trial's file "
                   "is scored on them, a check of the front chosen on validation [0: none].")
@click.option("--epochs", type=int, default=None, help="Retraining epochs per trial [30].")
@click.option("--batch-size", type=int, default=None, help="[256]")
@click.option("--seed", type=int, default=None, help="[0]")
@click.option("--range", "ranges", nargs=3, multiple=True, metavar="NAME LOW HIGH",
              help="Search NAME over LOW..HIGH instead of its default range (repeatable).")
@click.option("--choice", "choices", nargs=2, multiple=True, metavar="NAME V1,V2",
              help="Search NAME over these values only, e.g. --choice tau_schedule constant,linear.")
@click.option("--no-baseline", is_flag=True,
              help="Do not queue the tutorial's settings as the first trial.")
@data_option
@quiet_option
def search_run_cmd(out, trials, n_workers, storage, study_name, ranges, choices, no_baseline,
                   data_dir, quiet, **given):
    """Search the paper's hyper-parameters; every trial keeps its run folder and .sws file."""
    from sws.study.search import format_report, open_study, run_search
    given["ranges"] = {name: [low, high] for name, low, high in ranges}
    given["choices"] = {name: values.split(",") for name, values in choices}
    counts = run_search(out, given, trials, n_workers, storage, study_name, data_dir, quiet,
                        baseline=not no_baseline)
    click.echo(f"search: {counts.pop('wall_seconds'):.0f} s; trials " +
               ", ".join(f"{v} {k}" for k, v in counts.items()))
    click.echo(format_report(open_study(out), out))


@search_group.command("report")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Figure to write [OUT/pareto.png].")
def search_report_cmd(out, plot):
    """Print the Pareto front (validation error, CR) and plot it, CR on a log scale."""
    from sws.study.search import format_report, open_study, plot_pareto
    study = open_study(out)
    click.echo(format_report(study, out))
    click.echo(f"plot: {plot_pareto(study, plot or Path(out) / 'pareto.png')}")
