"""Command-line interface: ``sws pretrain | retrain | quantize | evaluate | run``.

Bad input gets a one-line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import sys
from pathlib import Path

import click

from sws.config import PRESETS, PretrainConfig, QuantizeConfig, RetrainConfig, from_dict, retrain_config
from sws.errors import ConfigError, RunDirError, SwsError, TrainingInterrupted
from sws.models import MODELS
from sws.pipeline import evaluate_path, run_pretrain, run_quantize, run_retrain
from sws.runs import RunDir

__all__ = ["main", "cli"]


def _options(*decorators):
    def wrap(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return wrap


data_option = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                           help="Folder with the MNIST IDX files (default: $SWS_DATA_DIR, "
                                "then the user cache, downloading there if online).")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
figures_option = click.option("--figures", is_flag=True,
                               help="Save per-epoch snapshots and draw the figures and the "
                                    "animation into RUN/figures/.")
force_option = click.option("--force", is_flag=True, help="Overwrite existing results.")
resume_option = click.option("--resume", type=click.Path(path_type=Path), default=None, metavar="RUN_DIR",
                             help="Continue an interrupted run from its last saved state, with the "
                                  "settings recorded there (bit for bit as if it had not stopped).")
guard_option = click.option("--guard/--no-guard", default=True, show_default=True,
                            help="Stop on divergence: a non-finite loss, exploding precisions or "
                                 "components collapsed onto each other.")
# what may still be given with --resume: nothing that changes the numbers
_RESUME_OK = {"resume", "data_dir", "quiet", "figures", "guard"}


def _no_settings_with_resume():
    ctx = click.get_current_context()
    from click.core import ParameterSource
    given = [p.opts[0] if getattr(p, "opts", None) else p.name for p in ctx.command.params
             if p.name not in _RESUME_OK and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if given:
        raise ConfigError(f"--resume continues with the settings recorded in the run folder; "
                          f"drop {', '.join(given)}")


@contextlib.contextmanager
def _resume_hint(command: str, run: "RunDir"):
    """Add to an interruption message the command that continues the run."""
    try:
        yield
    except TrainingInterrupted as e:
        raise TrainingInterrupted(f"{e}; continue with: sws {command} --resume {shlex.quote(str(run.path))}",
                                  e.signum) from None


def _refuse_interrupted(run: "RunDir", stage: str, command: str, force: bool):
    if run.has_state(stage) and not force:
        raise RunDirError(f"{run.path}: holds an interrupted {stage} "
                          f"({run.state_path(stage).name}.safetensors); continue it with "
                          f"'sws {command} --resume {run.path}' or pass --force to start over")

pretrain_options = _options(
    click.option("--model", type=click.Choice(list(MODELS)), default="tutorial-conv",
                 show_default=True, help="Reference network."),
    click.option("--pretrain-epochs", "pretrain_epochs", type=int, default=PretrainConfig.epochs,
                 help="Pretraining epochs (the tutorial runs 100; 20 reach its error).",
                 show_default=True),
    click.option("--pretrain-lr", "pretrain_lr", type=float, default=PretrainConfig.lr, show_default=True,
                 help="Adam learning rate of pretraining."),
    click.option("--input-norm", type=click.Choice(["none", "standardize"]), default="none",
                 show_default=True, help="'none': pixels/255 (tutorial); 'standardize': MNIST "
                 "mean/std, applied inside the model."),
    click.option("--weight-init", type=click.Choice(["torch", "keras"]), default="torch",
                 show_default=True, help="Initial weights: PyTorch's defaults, or Keras' "
                 "(Glorot-uniform, zero biases) as in the tutorial."),
    click.option("--train-subset", type=int, default=0, help="Use the first N training images."),
    click.option("--val-size", type=int, default=0,
                 help="Hold out N training images as a validation set."),
)

retrain_options = _options(
    click.option("--preset", type=click.Choice(list(PRESETS)), default="tutorial",
                 show_default=True, help="Named settings: the tutorial's or the paper's."),
    click.option("--epochs", type=int, default=None, help="Retraining epochs [preset]."),
    click.option("--tau", type=float, default=None, help="Weight of the complexity term [0.003]."),
    click.option("--lr-weights", type=float, default=None,
                 help="Adam learning rate of the network's weights [5e-4]."),
    click.option("--lr-means", type=float, default=None,
                 help="Learning rate of the mixture's means [tutorial 1e-4, paper 5e-4]."),
    click.option("--lr-log-precisions", type=float, default=None,
                 help="Learning rate of the log-precisions [tutorial 3e-3, paper 5e-4]."),
    click.option("--lr-mixing", type=float, default=None,
                 help="Learning rate of the mixing logits (and a learned pi0) [3e-3 / 5e-4]."),
    click.option("--components", "n_components", type=int, default=None,
                 help="Mixture components, the zero component included [16]."),
    click.option("--pi0", type=float, default=None, help="Zero component's mixing proportion."),
    click.option("--init", type=click.Choice(["linspace", "range"]), default=None,
                 help="Means: linspace(-0.6, 0.6) or spread over the pretrained weights."),
    click.option("--cover", type=click.Choice(["all", "weights"]), default=None,
                 help="Prior over all parameters (tutorial) or weights only."),
    click.option("--tau-schedule", type=click.Choice(["constant", "linear", "exponential"]),
                 default=None, help="Warm tau up from --tau-start over --tau-warmup-epochs."),
    click.option("--tau-start", type=float, default=None, help="tau at the first step of a warm-up."),
    click.option("--tau-warmup-epochs", type=float, default=None,
                 help="Epochs over which tau reaches --tau."),
    click.option("--learn-pi0/--fixed-pi0", "learn_pi0", default=None,
                 help="Learn pi0 under a Beta(--pi0-a, --pi0-b) prior (paper option)."),
    click.option("--pi0-a", type=float, default=None, help="Beta prior on pi0: a [1]."),
    click.option("--pi0-b", type=float, default=None, help="Beta prior on pi0: b [1]."),
)

merge_option = click.option("--merge-threshold", type=float, default=QuantizeConfig.merge_threshold,
                            show_default=True, help="KL divergence below which components merge.")


def _pretrain_cfg(model, epochs, lr, input_norm, weight_init, train_subset, val_size, batch_size,
                  seed) -> PretrainConfig:
    cfg = PretrainConfig(model=model, epochs=epochs, lr=lr, input_norm=input_norm,
                         weight_init=weight_init, train_subset=train_subset, val_size=val_size,
                         batch_size=batch_size, seed=seed)
    cfg.validate()
    return cfg


def _retrain_cfg(preset, batch_size, seed, **kw):
    return retrain_config(preset, batch_size=batch_size, seed=seed, **kw)


_ARGV: list[str] = []  # the arguments main() was called with, recorded with each run


def _record_command(run: RunDir, stage: str, settings: dict):
    run.update_json("config.json", stage, {"command": shlex.join(["sws", *_ARGV]),
                                           "settings": settings})


def _echo_metrics(title: str, metrics: dict):
    keys = [k for k in metrics if isinstance(metrics[k], (int, float)) and k != "layers"]
    click.echo(f"{title}: " + ", ".join(f"{k}={metrics[k]:.4g}" for k in keys))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sws")
def cli():
    """Compress neural networks by soft weight-sharing (Ullrich, Meeds & Welling, 2017)."""


@cli.command("pretrain")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="New run folder.")
@pretrain_options
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@data_option
@force_option
@quiet_option
@resume_option
@guard_option
def pretrain_cmd(out, model, pretrain_epochs, pretrain_lr, input_norm, weight_init, train_subset, val_size, batch_size, seed,
                 data_dir, force, quiet, resume, guard):
    """Train a reference network with plain cross-entropy."""
    if resume is not None:
        _no_settings_with_resume()
        run = RunDir.open(resume)
        if run.complete("pretrained") and not run.has_state("pretrain"):
            raise RunDirError(f"{run.path}: pretraining already finished; nothing to resume")
        with _resume_hint("pretrain", run):
            _echo_metrics("pretrained", run_pretrain(run, None, data_dir, quiet, resume=True, guard=guard))
        return
    if out is None:
        raise click.UsageError("pass --out RUN_DIR (a new run folder) or --resume RUN_DIR")
    cfg = _pretrain_cfg(model, pretrain_epochs, pretrain_lr, input_norm, weight_init, train_subset,
                        val_size, batch_size, seed)
    run = RunDir.create(out, force)
    _record_command(run, "pretrain", vars(cfg))
    with _resume_hint("pretrain", run):
        _echo_metrics("pretrained", run_pretrain(run, cfg, data_dir, quiet, guard=guard))


@cli.command("retrain")
@click.argument("run_dir", type=click.Path(path_type=Path), required=False)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write into a new run folder (the pretrained net is copied) instead of RUN_DIR.")
@retrain_options
@click.option("--batch-size", type=int, default=None)
@click.option("--seed", type=int, default=None)
@data_option
@force_option
@quiet_option
@figures_option
@resume_option
@guard_option
def retrain_cmd(run_dir, out, preset, batch_size, seed, data_dir, force, quiet, figures, resume, guard, **kw):
    """Retrain a pretrained run with the Gaussian-mixture prior."""
    import dataclasses
    if resume is not None:
        if run_dir is not None:
            raise click.UsageError("give RUN_DIR or --resume RUN_DIR, not both")
        _no_settings_with_resume()
        run = RunDir.open(resume)
        if run.complete("retrained") and not run.has_state("retrain"):
            raise RunDirError(f"{run.path}: retraining already finished; nothing to resume")
        with _resume_hint("retrain", run):
            _echo_metrics("retrained", run_retrain(run, None, data_dir, quiet, snapshots=figures,
                                                   resume=True, guard=guard))
        if figures:
            _draw_figures(run)
        return
    if run_dir is None:
        raise click.UsageError("missing RUN_DIR (or --resume RUN_DIR)")
    cfg = _retrain_cfg(preset, batch_size, seed, **kw)
    src = RunDir.open(run_dir)
    src.require("pretrained", "run 'sws pretrain' first")
    if out is not None:
        run = RunDir.create(out, force)
        tensors, meta = src.load("pretrained")
        run.save("pretrained", tensors, meta)
        if "pretrained" in src.read_json("metrics.json", {}):
            run.update_json("metrics.json", "pretrained", src.read_json("metrics.json", {})["pretrained"])
    else:
        run = src
        run.refuse_overwrite("retrained", force)
        _refuse_interrupted(run, "retrain", "retrain", force)
    _record_command(run, "retrain", dataclasses.asdict(cfg))
    with _resume_hint("retrain", run):
        _echo_metrics("retrained", run_retrain(run, cfg, data_dir, quiet, snapshots=figures, guard=guard))
    if figures:
        _draw_figures(run)


@cli.command("quantize")
@click.argument("run_dir", type=click.Path(path_type=Path))
@merge_option
@data_option
@force_option
def quantize_cmd(run_dir, merge_threshold, data_dir, force):
    """Post-process a retrained run: merge components, snap weights to the codebook."""
    cfg = QuantizeConfig(merge_threshold)
    cfg.validate()
    run = RunDir.open(run_dir)
    run.require("retrained", "run 'sws retrain' first")
    run.refuse_overwrite("quantized", force)
    _record_command(run, "quantize", vars(cfg))
    _print_report(run_quantize(run, cfg, data_dir))


@cli.command("evaluate")
@click.argument("path", type=click.Path(path_type=Path))
@data_option
def evaluate_cmd(path, data_dir):
    """Test accuracy of a run folder's checkpoints or of one checkpoint file."""
    if not path.exists():
        raise SwsError(f"{path}: no such file or folder")
    if path.suffix == ".sws":
        from sws.fileformat import evaluate_file
        results = evaluate_file(path, data_dir)
    else:
        results = evaluate_path(path, data_dir)
    for stage, m in results.items():
        click.echo(f"{stage:<11} accuracy {m['accuracy']:.4f}  error {100 * m['error']:.2f}%  "
                   f"non-zero {100 * m['nonzero_share']:.2f}%  distinct values {m['distinct_values']}")


@cli.command("run")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="New run folder.")
@pretrain_options
@retrain_options
@merge_option
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@data_option
@force_option
@quiet_option
@figures_option
@resume_option
@guard_option
def run_cmd(out, model, pretrain_epochs, pretrain_lr, input_norm, weight_init, train_subset, val_size, merge_threshold,
            preset, batch_size, seed, data_dir, force, quiet, figures, resume, guard, **kw):
    """The whole pipeline: pretrain, retrain with the prior, quantize, report."""
    import dataclasses
    if resume is not None:
        _no_settings_with_resume()
        _resume_run(RunDir.open(resume), data_dir, quiet, figures, guard)
        return
    if out is None:
        raise click.UsageError("pass --out RUN_DIR (a new run folder) or --resume RUN_DIR")
    pcfg = _pretrain_cfg(model, pretrain_epochs, pretrain_lr, input_norm, weight_init, train_subset,
                         val_size, batch_size, seed)
    rcfg = _retrain_cfg(preset, batch_size, seed, **kw)
    qcfg = QuantizeConfig(merge_threshold)
    qcfg.validate()
    run = RunDir.create(out, force)
    _record_command(run, "run", {"pretrain": vars(pcfg), "retrain": dataclasses.asdict(rcfg),
                                 "quantize": vars(qcfg)})
    with _resume_hint("run", run):
        _echo_metrics("pretrained", run_pretrain(run, pcfg, data_dir, quiet, guard=guard))
        _echo_metrics("retrained", run_retrain(run, rcfg, data_dir, quiet, snapshots=figures, guard=guard))
    _print_report(run_quantize(run, qcfg, data_dir))
    if figures:
        _draw_figures(run)
    _write_sws(run.path, run.path / "model.sws")


def _resume_run(run: RunDir, data_dir, quiet, figures, guard):
    """Continue 'sws run' where it stopped: the unfinished stages, with the recorded settings."""
    rec = run.read_json("config.json", {}).get("run")
    if not isinstance(rec, dict) or not isinstance(rec.get("settings"), dict):
        raise RunDirError(f"{run.path}: not made by 'sws run' (config.json has no 'run' entry); "
                          "resume its stage with 'sws pretrain --resume' or 'sws retrain --resume'")
    settings = rec["settings"]
    try:
        pcfg = from_dict(PretrainConfig, settings["pretrain"])
        rcfg = from_dict(RetrainConfig, settings["retrain"])
        qcfg = from_dict(QuantizeConfig, settings["quantize"])
    except (KeyError, TypeError) as e:
        raise RunDirError(f"{run.path / 'config.json'}: incomplete 'run' settings ({e})") from None
    with _resume_hint("run", run):
        if not run.complete("pretrained") or run.has_state("pretrain"):
            again = run.has_state("pretrain")
            _echo_metrics("pretrained", run_pretrain(run, None if again else pcfg, data_dir, quiet,
                                                     resume=again, guard=guard))
        if not run.complete("retrained") or run.has_state("retrain"):
            again = run.has_state("retrain")
            _echo_metrics("retrained", run_retrain(run, None if again else rcfg, data_dir, quiet,
                                                   snapshots=figures, resume=again, guard=guard))
    if not run.complete("quantized"):
        _print_report(run_quantize(run, qcfg, data_dir))
    if figures:
        _draw_figures(run)
    if not (run.path / "model.sws").is_file():
        _write_sws(run.path, run.path / "model.sws")


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="HTML file to write [RUN_DIR/report.html].")
@click.option("--redraw", is_flag=True, help="Redraw the per-epoch frames and the animation "
              "even where they exist.")
def report_cmd(run_dir, out, redraw):
    """Write one self-contained HTML page: figures, metrics, command and settings."""
    from sws.report import write_report
    click.echo(f"report: {write_report(run_dir, out, redraw)}")


def _draw_figures(run: RunDir):
    from sws.figures import draw_run_figures
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
    from sws.fileformat import FormatError, _read_bytes
    from sws.filestats import file_stats, format_stats
    data = _read_bytes(path)
    try:
        click.echo(format_stats(file_stats(data)))
    except FormatError as e:
        raise type(e)(f"{path}: {e}") from None


def _write_sws(run_dir, out: Path):
    from sws.fileformat import compress_run
    from sws.filestats import file_stats
    size = compress_run(run_dir, out)
    t = file_stats(out.read_bytes())["total"]
    click.echo(f"wrote {out}: {size} bytes, CR {t['cr_file']:.1f} from the file's bytes "
               f"({t['cr_paper']:.1f} by the paper's accounting, entropy bound {t['cr_entropy']:.1f})")


@cli.group("bench")
def bench_group():
    """Benchmarks that reproduce the paper's results (from a source checkout)."""


@bench_group.command("table1", context_settings={"ignore_unknown_options": True,
                                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_table1_cmd(args):
    """Table 1: soft weight-sharing and the baselines on the LeNets (benchmarks/table1.py;
    options: sws bench table1 --help)."""
    import importlib.util
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "table1.py"
    if not script.is_file():
        raise SwsError(f"{script}: not found; 'sws bench' runs from a source checkout")
    spec = importlib.util.spec_from_file_location("sws_bench_table1", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(list(args))
    if rc:
        sys.exit(rc)


@cli.group("search")
def search_group():
    """Hyper-parameter search (Optuna): validation error against CR from the file's bytes.

    'sws search run OUT' starts or resumes a study; 'sws search report OUT' prints
    its Pareto front and plots it.
    """


def _search_space_epilog() -> str:
    from sws.search import space_help
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
              help="SQLAlchemy URL of the study, e.g. postgresql://user@host/db, shared by "
                   "several machines [sqlite:///OUT/study.db].")
@click.option("--study-name", default=None, help="Study name in the storage [OUT's name].")
@click.option("--model", type=click.Choice(list(MODELS)), default=None, help="Reference network [tutorial-conv].")
@click.option("--pretrain-epochs", type=int, default=None, help="Epochs of the shared pretraining [10].")
@click.option("--train-subset", type=int, default=None, help="Use the first N training images [all].")
@click.option("--val-size", type=int, default=None,
              help="Training images held out to score trials; the test set is never used [10000].")
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
    from sws.search import format_report, open_study, run_search
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
    from sws.search import format_report, open_study, plot_pareto
    study = open_study(out)
    click.echo(format_report(study, out))
    click.echo(f"plot: {plot_pareto(study, plot or Path(out) / 'pareto.png')}")


def _print_report(m: dict):
    click.echo(f"{'layer':<16}{'shape':>16}{'non-zero':>12}{'share':>9}{'values':>8}")
    for name, row in m["layers"].items():
        click.echo(f"{name:<16}{'x'.join(map(str, row['shape'])):>16}{row['nonzero']:>12}"
                   f"{100 * row['nonzero_share']:>8.2f}%{row['distinct']:>8}")
    click.echo(f"accuracy: pretrained {m.get('pretrained_test_accuracy', float('nan')):.4f}, "
               f"retrained {m['retrained_test_accuracy']:.4f}, "
               f"post-processed {m['test_accuracy']:.4f}")
    click.echo(f"non-zero weights: {100 * m['nonzero_share']:.2f}% "
               f"(pretrained {100 * m.get('pretrained_nonzero_share', float('nan')):.2f}%); "
               f"distinct values: {m['distinct_values']} "
               f"({m['components_before_merge']} components -> {m['components_after_merge']})")
    loss = m["retrained_test_accuracy"] - m["test_accuracy"]
    if m["nonzero_share"] == 0.0 or loss > 0.05:
        what = ("every weight was snapped to 0" if m["nonzero_share"] == 0.0
                else f"post-processing cost {100 * loss:.1f} accuracy points")
        click.echo(f"warning: {what}: the mixture had not settled (weights still spread inside "
                   "the zero component); retrain longer, or raise --lr-weights, "
                   "--lr-log-precisions and --lr-mixing", err=True)


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (the loops save their state first)."""


def _on_sigterm(signum, frame):
    raise _Terminated


def main(argv=None):
    """Entry point: run the CLI, turning the project's errors into exit code 2.

    SIGINT and SIGTERM exit with 130 and 143; during training, after saving
    the state that ``--resume`` continues from.
    """
    _ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    old_term = None
    try:
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        cli.main(args=argv, standalone_mode=False)
    except TrainingInterrupted as e:
        click.echo(f"interrupted: {e}", err=True)
        sys.exit(e.exit_code)
    except _Terminated:
        click.echo("terminated", err=True)
        sys.exit(143)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except SwsError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    sys.exit(0)


if __name__ == "__main__":
    main()
