"""Command-line interface: ``sws pretrain | retrain | quantize | evaluate | run | ...``.

This module holds the ``sws`` group, the options the commands share and the
entry point; the commands live in ``pipeline_cmds`` (the pipeline's stages),
``file_cmds`` (compress, inspect, report) and ``study_cmds`` (bench, search).
Bad input gets a one-line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
from pathlib import Path

import click

from sws.config import LR_SCHEDULES, PRESETS, PretrainConfig, QuantizeConfig, retrain_config
from sws.errors import ConfigError, RunDirError, SwsError, TrainingInterrupted
from sws.zoo.models import MODELS
from sws.runs.rundir import RunDir

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
    click.option("--model", default="tutorial-conv", show_default=True,
                 help=f"A reference net ({', '.join(MODELS)}) or your own: PKG.MODULE:FUNCTION "
                      "returning an nn.Module (imported from the current folder or PYTHONPATH)."),
    click.option("--data", default="", metavar="PKG.MODULE:FUNCTION",
                 help="Your data: a function returning (train, val, test) Datasets of (input, target) "
                      "pairs (test may be None) [MNIST]."),
    click.option("--weights", type=click.Path(path_type=Path), default=None,
                 help="Start from these pretrained weights (safetensors, or a state dict saved with "
                      "torch.save) instead of pretraining."),
    click.option("--pretrain-epochs", "pretrain_epochs", type=int, default=PretrainConfig.epochs,
                 help="Pretraining epochs (the tutorial runs 100; 20 reach its error).",
                 show_default=True),
    click.option("--pretrain-lr", "pretrain_lr", type=float, default=PretrainConfig.lr, show_default=True,
                 help="Adam learning rate of pretraining."),
    click.option("--pretrain-lr-schedule", "pretrain_lr_schedule", type=click.Choice(LR_SCHEDULES),
                 default=PretrainConfig.lr_schedule, show_default=True,
                 help="'cosine': anneal the rate to 0 over pretraining."),
    click.option("--input-norm", type=click.Choice(["none", "standardize"]), default="none",
                 show_default=True, help="'none': pixels/255 (tutorial); 'standardize': MNIST "
                 "mean/std, applied inside the model."),
    click.option("--weight-init", type=click.Choice(["torch", "keras"]), default="torch",
                 show_default=True, help="Initial weights: PyTorch's defaults, or Keras' "
                 "(Glorot-uniform, zero biases) as in the tutorial."),
    click.option("--pretrain-augment", "pretrain_augment", default="", metavar="SPEC",
                 help="Augment pretraining's batches of images: 'shift:K' (random shifts of up to K pixels), "
                      "'flip' (random mirroring), joined by '+' [off]."),
    click.option("--train-subset", type=int, default=0, help="Use the first N training images."),
    click.option("--val-size", type=int, default=None,
                 help="Hold out N training images as a validation set, never trained on [MNIST: 5000, "
                      "0 with --no-budget; your --data: its own validation set]."),
    click.option("--holdout-size", type=int, default=0,
                 help="Set aside N more training images, never trained on and used by no choice of the run "
                      "(validation makes those); the pretrained and the post-processed nets are scored on them "
                      "to check the choices [0: none]."),
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
    click.option("--init", type=click.Choice(["linspace", "range", "paper"]), default=None,
                 help="Means: linspace(-0.6, 0.6), or spread over the pretrained weights ('paper': each "
                      "component's sd the spacing of the means)."),
    click.option("--init-sigma", type=float, default=None,
                 help="Initial standard deviation of every component [tutorial 0.25]."),
    click.option("--cover", type=click.Choice(["all", "weights"]), default=None,
                 help="Prior over all parameters (tutorial) or weights only."),
    click.option("--tau-schedule", type=click.Choice(["constant", "linear", "exponential"]),
                 default=None, help="Warm tau up from --tau-start over --tau-warmup-epochs."),
    click.option("--tau-start", type=float, default=None, help="tau at the first step of a warm-up."),
    click.option("--tau-warmup-epochs", type=float, default=None,
                 help="Epochs over which tau reaches --tau."),
    click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=None,
                 help="'cosine': anneal all four rates to 0 over retraining [constant]."),
    click.option("--learn-pi0/--fixed-pi0", "learn_pi0", default=None,
                 help="Learn pi0 under a Beta(--pi0-a, --pi0-b) prior (paper option)."),
    click.option("--pi0-a", type=float, default=None, help="Beta prior on pi0: a [1]."),
    click.option("--pi0-b", type=float, default=None, help="Beta prior on pi0: b [1]."),
    click.option("--zero-alpha", type=float, default=None,
                 help="Gamma hyper-prior on the zero component's precision: shape [5000]."),
    click.option("--zero-beta", type=float, default=None,
                 help="... and rate [2]: its target precision is (alpha - 1) / beta."),
    click.option("--alpha", type=float, default=None,
                 help="Gamma hyper-prior on the other components' precisions: shape [250]."),
    click.option("--beta", type=float, default=None,
                 help="... and rate [0.1] (target sd about 0.02; smaller: tighter clusters)."),
    click.option("--zero-sharpen", type=float, default=None, metavar="FACTOR",
                 help="Grow the zero component's target precision by FACTOR over retraining (1: fixed) [1]."),
    click.option("--budget/--no-budget", "budget", default=None,
                 help="Keep the retrained state whose post-processed network has the highest CR within "
                      "--max-error-increase of the pretrained net's validation error, and stop when it no "
                      "longer improves [--budget]; --no-budget keeps the last epoch, as the tutorial."),
    click.option("--max-error-increase", type=float, default=None, metavar="POINTS",
                 help="The accuracy budget: validation error points over the pretrained net [0.3]."),
    click.option("--tau-control", type=float, default=None, metavar="FACTOR",
                 help="With the budget: divide tau by FACTOR after an epoch whose retrained network used "
                      "more than half the budget, multiply it by FACTOR otherwise (1: off) [1.5]."),
    click.option("--patience", type=int, default=None,
                 help="Watches without a better kept state before retraining stops (0: never) [5]."),
    click.option("--watch-every", type=int, default=None, metavar="STEPS",
                 help="With the budget: also post-process and validate every STEPS steps within an "
                      "epoch (for long epochs); any of these watches may be kept (0: epoch ends) [0]."),
    click.option("--snap-epochs", type=int, default=None, metavar="N",
                 help="With the budget: after retraining, train the kept state N more epochs through the "
                      "snap (each weight at its component's value in the forward pass; beyond the paper) [5]."),
    click.option("--distill", type=float, default=None, metavar="WEIGHT",
                 help="Retrain on (1 - WEIGHT) x the loss + WEIGHT x the pretrained network's soft targets "
                      "(distillation; classifiers; beyond the paper) [0: off]."),
    click.option("--distill-temperature", type=float, default=None, metavar="T",
                 help="The softmax temperature of those soft targets [4]."),
    click.option("--augment", default=None, metavar="SPEC",
                 help="Augment retraining's batches of images, as --pretrain-augment ('shift:2', "
                      "'shift:2+flip') [off]."),
    click.option("--snap-lr-schedule", type=click.Choice(LR_SCHEDULES), default=None,
                 help="The learning rates over the snap phase, restarted at the base rates [as --lr-schedule]."),
)

merge_option = _options(
    click.option("--merge-threshold", type=float, default=QuantizeConfig.merge_threshold,
                 show_default=True, help="KL divergence below which components merge."),
    click.option("--drop-dead-units/--keep-dead-units", default=QuantizeConfig.drop_dead_units,
                 show_default=True, help="After snapping, zero the weights that cannot change the "
                 "output: leaving units that output 0, entering units nobody reads (lossless)."),
    click.option("--finetune-epochs", type=int, default=None,
                 help="After snapping, train the codebook values for N epochs, assignments and zeros "
                      "fixed (beyond the paper; the file's size does not change) [3; 0 with --no-budget]."),
    click.option("--finetune-lr", type=float, default=QuantizeConfig.finetune_lr, show_default=True,
                 help="Adam learning rate of the codebook fine-tuning."),
)


def _pretrain_cfg(model, data, epochs, lr, lr_schedule, input_norm, weight_init, train_subset, val_size,
                  batch_size, seed, budget=None, augment="", holdout_size=0) -> PretrainConfig:
    if val_size is None:      # MNIST: a held-out split (sws.zoo.mnist.AUTO_VAL); a user's data: its own
        from sws.zoo.mnist import AUTO_VAL
        val_size = 0 if data or budget is False else AUTO_VAL
    cfg = PretrainConfig(model=model, data=data, epochs=epochs, lr=lr, lr_schedule=lr_schedule, input_norm=input_norm,
                         weight_init=weight_init, train_subset=train_subset, val_size=val_size,
                         batch_size=batch_size, seed=seed, augment=augment, holdout_size=holdout_size)
    cfg.validate()
    return cfg


def _quantize_cfg(merge_threshold, drop_dead_units, finetune_epochs, finetune_lr, budget) -> QuantizeConfig:
    """Post-processing settings; the codebook is fine-tuned by default unless the budget is off
    (--no-budget: the tutorial's post-processing exactly)."""
    if finetune_epochs is None:
        finetune_epochs = QuantizeConfig.finetune_epochs if budget is not False else 0
    cfg = QuantizeConfig(merge_threshold, drop_dead_units, finetune_epochs, finetune_lr)
    cfg.validate()
    return cfg


def _retrain_cfg(preset, batch_size, seed, **kw):
    return retrain_config(preset, batch_size=batch_size, seed=seed, **kw)


_ARGV: list[str] = []  # the arguments main() was called with, recorded with each run


def _record_command(run: RunDir, stage: str, settings: dict):
    run.update_json("config.json", stage, {"command": shlex.join(["sws", *_ARGV]),
                                           "settings": settings})


def _echo_metrics(title: str, metrics: dict):
    keys = [k for k in metrics if isinstance(metrics[k], (int, float)) and not isinstance(metrics[k], bool)]
    click.echo(f"{title}: " + ", ".join(f"{k}={metrics[k]:.4g}" for k in keys))
    decision = metrics.get("budget") or {}
    if decision.get("message"):   # the final word comes after post-processing (_print_report)
        click.echo("budget, before post-processing: " + decision["message"])


def _budget_status(run: RunDir, say: bool = False) -> int:
    """The exit status a finished run owes: OVER_BUDGET_EXIT when no state met the budget
    (``say``: and the warning line, where no report printed it)."""
    from sws.method.watch import OVER_BUDGET_EXIT
    metrics = run.read_json("metrics.json", {})
    decision = metrics.get("quantized", {}).get("budget") or metrics.get("retrained", {}).get("budget") or {}
    if decision.get("status") != "over":
        return 0
    if say:
        click.echo(f"warning: {decision['message']}", err=True)
    return OVER_BUDGET_EXIT


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sws")
def cli():
    """Compress neural networks by soft weight-sharing (Ullrich, Meeds & Welling, 2017)."""


def _print_report(m: dict):
    decision = m.get("budget") or {}
    if decision.get("message"):
        click.echo(("warning: " if decision["status"] == "over" else "budget: ") + decision["message"],
                   err=decision["status"] == "over")
    click.echo(f"{'layer':<28}{'shape':>16}{'non-zero':>12}{'share':>9}{'values':>8}")
    for name, row in m["layers"].items():
        click.echo(f"{name:<28}{'x'.join(map(str, row['shape'])):>16}{row['nonzero']:>12}"
                   f"{100 * row['nonzero_share']:>8.2f}%{row['distinct']:>8}")
    split = m.get("split", "test")
    what = "accuracy" if f"{split}_accuracy" in m else "loss"
    nan = float("nan")
    click.echo(f"{split} {what}: pretrained {m.get(f'pretrained_{split}_{what}', nan):.4f}, "
               f"retrained{' through the snap' if m.get('retrained_snapped') else ''} "
               f"{m.get(f'retrained_{split}_{what}', nan):.4f}, "
               f"post-processed {m.get(f'{split}_{what}', nan):.4f}")
    if "holdout_error" in m:     # --holdout-size: images no choice of the run saw
        click.echo(f"holdout error (no choice saw these images): post-processed {100 * m['holdout_error']:.2f}%")
    click.echo(f"non-zero weights: {100 * m['nonzero_share']:.2f}% "
               f"(pretrained {100 * m.get('pretrained_nonzero_share', float('nan')):.2f}%); "
               f"distinct values: {m['distinct_values']} "
               f"({m['components_before_merge']} components -> {m['components_after_merge']})")
    loss = m.get(f"retrained_{split}_accuracy", 0.0) - m.get(f"{split}_accuracy", 0.0)
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
    rc = 0
    try:
        rc = cli.main(args=argv, standalone_mode=False)
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
    sys.exit(rc if isinstance(rc, int) and not isinstance(rc, bool) else 0)




# the commands register themselves on ``cli`` when their modules are imported
from sws.cli import file_cmds as _file_cmds  # noqa: E402,F401
from sws.cli import pipeline_cmds as _pipeline_cmds  # noqa: E402,F401
from sws.cli import study_cmds as _study_cmds  # noqa: E402,F401
from sws.cli import export_cmds as _export_cmds  # noqa: E402,F401
