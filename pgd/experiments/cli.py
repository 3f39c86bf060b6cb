"""Command line: ``python -m pgd run`` runs one experiment, prints its results and saves JSON;
``python -m pgd compare`` runs a grid of methods, ratios and seeds; ``python -m pgd audit`` ranks
the training images by PGD's score and writes a report; ``python -m pgd list`` lists
the registered datasets and methods. The options of ``run`` are built from the registries: a
dataset's or a method's own settings appear here as soon as it declares them."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.errors import PgdError
from ..core.params import add_param_options
from ..core.plugins import PLUGINS_ENV, load_plugin, plugins_from_environment, split_plugin_options
from ..core.profiles import PROFILES
from ..core.runtime import DEVICES, PROGRESS_ENV, loud_warning
from ..datasets.base import check_ratio
from ..datasets.registry import DATASETS, get_dataset
from ..methods.registry import METHODS
from ..models import MODELS
from ..training.selection import SELECTIONS
from .audit import audit
from .compare import SELECTION_METRIC, grid_entries, run_grid, summary_table, wall_time_table
from .config import COMMON_FIELDS, ExperimentConfig
from .pipeline import run


def _ratio(text: str) -> float:
    try:
        return check_ratio(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pgd",
        description="PGD, Per-sample Gradient-based Debiasing (Ahn, Kim & Yun, ICLR 2023).",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        metavar="PATH_OR_MODULE",
        help="import a .py file or module that registers datasets or methods, before the "
        f"sub-command (repeatable; also ${PLUGINS_ENV}, separated by {os.pathsep!r})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser(
        "run",
        help="train one model (vanilla, PGD or a baseline) and report its accuracies",
        description="Train a method on a biased dataset and report unbiased, bias-aligned, "
        "bias-conflicting and worst-group test accuracy. `python -m pgd list` shows the "
        "registered datasets and methods.",
    )
    r.add_argument("--dataset", choices=tuple(DATASETS), default="cmnist")
    r.add_argument("--method", choices=tuple(METHODS), default="pgd")
    r.add_argument(
        "--ratio",
        type=_ratio,
        default=None,
        help="bias-conflicting ratio in (0, 1), where the dataset lets one choose it; default: "
        + ", ".join(f"{d.name} {d.default_ratio:g}" for d in DATASETS.values() if d.default_ratio)
        + "; "
        + ", ".join(d.name for d in DATASETS.values() if d.default_ratio is None)
        + " has none",
    )
    r.add_argument(
        "--model",
        choices=tuple(MODELS),
        default=None,
        help="default: " + ", ".join(f"{d.default_model} on {d.name}" for d in DATASETS.values()),
    )
    r.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="resnet18: start from torchvision's ImageNet weights (default: random init)",
    )
    r.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        default=None,
        help="smoke (seconds), quick (every image, fewer epochs: about 160,000 training images "
        "per stage, at most 20 epochs), full (the paper's 100 epochs); default: $PGD_PROFILE, "
        "else quick",
    )
    r.add_argument(
        "--epochs", type=int, default=None, help="epochs per training stage (default: profile's)"
    )
    r.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    r.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="data seed, e.g. the colouring (default: --seed)",
    )
    r.add_argument("--device", default=None, help=f"{', '.join(DEVICES)} or cuda:N")
    add_param_options(
        r.add_argument_group("dataset settings (each declared by its dataset)"),
        {name: spec.options for name, spec in DATASETS.items()},
    )
    add_param_options(
        r.add_argument_group("method settings (each declared by its method)"),
        {name: spec.params for name, spec in METHODS.items()},
    )
    r.add_argument("--data-root", default=None, help="dataset folder (default $PGD_DATA)")
    r.add_argument(
        "--download",
        nargs="?",
        const="auto",
        default=None,
        choices=("auto", "drive", "mirror"),
        help="fetch the data if it is not there, where the dataset can (celeba: torchvision's "
        "Google Drive download, then the Hugging Face mirror; or only one of them)",
    )
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes for image files (default: $PGD_WORKERS, else up to 8 on "
        "CUDA and 0 on CPU)",
    )
    r.add_argument(
        "--checkpoint-dir",
        default="auto",
        help="checkpoint folder (default $PGD_RUNS/<run name>, else ./runs/<run name>)",
    )
    r.add_argument("--no-checkpoints", action="store_true", help="write no checkpoints")
    r.add_argument("--resume", action="store_true", help="continue a killed run")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.add_argument("--out", type=Path, default=None, help="write the results as JSON here")

    a = commands.add_parser(
        "audit",
        help="find the training images a biased model gets wrong: PGD's scores, ranked, with "
        "figures and a summary",
        description="Train PGD's biased model (or read it back with --resume), score every "
        "training image by its per-sample gradient norm, and write OUT/scores.csv (path, label, "
        "prediction, loss, score, rank, sampling probability), OUT/top_scored.png, "
        "OUT/score_histograms.png and OUT/summary.md. Needs no bias labels; an image folder's "
        "bias.csv, if there, is used for the report only.",
    )
    a.add_argument("--dataset", choices=tuple(DATASETS), default="folder")
    a.add_argument(
        "--data-root",
        default=None,
        help="dataset folder (for --dataset folder: the image folder, DIR/train/<class>/*)",
    )
    a.add_argument("--ratio", type=_ratio, default=None, help="as for run")
    a.add_argument("--model", choices=tuple(MODELS), default=None)
    a.add_argument("--pretrained", action="store_true", default=None)
    a.add_argument("--profile", choices=tuple(PROFILES), default=None)
    a.add_argument("--epochs", type=int, default=None, help="epochs of the biased model")
    a.add_argument("--seed", type=int, default=None)
    a.add_argument("--device", default=None)
    add_param_options(
        a.add_argument_group("dataset settings"),
        {name: spec.options for name, spec in DATASETS.items()},
    )
    add_param_options(a.add_argument_group("PGD's score"), {"pgd": METHODS["pgd"].params})
    a.add_argument("--out", type=Path, required=True, help="report folder (new, or a report)")
    a.add_argument("--top", type=int, default=8, help="images per class in top_scored.png")
    a.add_argument("--resume", action="store_true", help="reuse the biased model's checkpoint")
    a.add_argument("--no-checkpoints", action="store_true", help="write no checkpoint")
    a.add_argument("--no-progress", action="store_true", help="hide progress bars")

    commands.add_parser(
        "list",
        help="list the registered datasets and methods",
        description="The registered datasets (with their data sources and whether a stand-in "
        "exists) and methods (with whether each reads bias labels), one per line.",
    )

    c = commands.add_parser(
        "compare",
        help="run PGD and the baselines over ratios and seeds; resumable; writes a tidy CSV",
        description="Run vanilla, LfF, JTT, PGD (last-layer and all-layer scores) and the "
        "oracles upsampling and GroupDRO (they read bias labels) over bias-conflicting ratios "
        "and seeds. Finished runs are kept in OUT/cells: rerun the same command to resume. "
        "Writes OUT/results.csv (one row per dataset/ratio/method/seed) and OUT/tuning.csv.",
    )
    c.add_argument("--dataset", choices=DATASETS, default="cmnist")
    c.add_argument(
        "--ratios",
        default=None,
        help="comma-separated bias-conflicting ratios, e.g. 0.005,0.01,0.05 (default: the "
        "dataset's; CelebA has none)",
    )
    c.add_argument(
        "--methods",
        default="all",
        help=f"all, or a comma-separated subset of {', '.join(grid_entries()[0])}",
    )
    c.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    c.add_argument("--profile", choices=tuple(PROFILES), default=None)
    c.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    c.add_argument("--model", choices=tuple(MODELS), default=None, help="default: the dataset's")
    add_param_options(
        c.add_argument_group("dataset settings (each declared by its dataset)"),
        {name: spec.options for name, spec in DATASETS.items()},
    )
    c.add_argument("--device", default="auto")
    c.add_argument("--data-root", default=None)
    c.add_argument(
        "--no-tuning",
        action="store_true",
        help="use each method's default hyper-parameters instead of the validation search",
    )
    c.add_argument(
        "--schedules",
        default=None,
        help="comma-separated profiles whose epochs per stage to run, e.g. quick,full "
        "(default: --profile)",
    )
    c.add_argument(
        "--protocols",
        default="shared",
        help="shared (every method with the dataset's network and schedule) and/or own (each "
        "method as its paper trains it on this dataset, where it has such a protocol), "
        "comma-separated",
    )
    c.add_argument(
        "--budget",
        default="stage",
        help="stage (every training stage the schedule's epochs: PGD, with two stages, trains "
        "twice as long) and/or total (every method as many epochs in all as PGD), "
        "comma-separated",
    )
    c.add_argument(
        "--selection",
        default="valid_loss",
        help="model-selection rules to report, comma-separated, or all: "
        + ", ".join(SELECTIONS)
        + " (the last reads the validation split's bias labels: an oracle rule). Rules are "
        "applied after training, from each epoch's validation results; one CSV row per rule",
    )
    c.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    c.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    return parser


def _dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen dataset's own settings that were given on the command line."""
    options = get_dataset(args.dataset).options
    given = {o.name: getattr(args, o.name, None) for o in options}
    return {k: v for k, v in given.items() if v is not None}


def _config(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration from the options given (those left out keep their defaults)."""
    names = list(COMMON_FIELDS)
    names += [o.name for d in DATASETS.values() for o in d.options]
    names += [p.name for m in METHODS.values() for p in m.params]
    given = {name: getattr(args, name, None) for name in dict.fromkeys(names)}
    return ExperimentConfig(**{k: v for k, v in given.items() if v is not None})


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    result = run(
        config,
        data_root=args.data_root,
        checkpoint_dir=None if args.no_checkpoints else args.checkpoint_dir,
        resume=args.resume,
        progress=not args.no_progress,
        workers=args.workers,
        download=args.download or False,
    )
    summary = result.to_dict()
    print(
        f"\nPGD book, {config.dataset}, method={config.method}, "
        + (f"ratio={config.ratio:g}, " if config.ratio is not None else "")
        + f"model={config.model}, profile={config.profile_spec.name}, "
        f"epochs={config.stage_epochs(result.data['train_samples'])}, seed={config.seed}"
        + "".join(f", {name}={value}" for name, value in config.params.items())
    )
    print(f"data: {result.data['description']}")
    print(f"device: {summary['device']}; wall time {summary['seconds']:.1f} s")
    if result.sampling is not None:
        diag = result.sampling
        print(
            f"sampling: effective sample size {diag['effective_sample_size']:,.1f} of "
            f"{diag['samples']:,}, {diag['distinct_per_epoch']:,.0f} distinct samples per epoch, "
            f"{100 * diag['top1pct_mass']:.1f}% of the probability on the top 1%"
        )
    if result.conflicting_mass is not None and result.data.get("bias_known", True):
        print(
            f"{config.method} moved {100 * result.conflicting_mass:.1f}% of the sampling "
            f"probability onto the {100 * result.data['train_conflicting_share']:.2f}% "
            "bias-conflicting samples"
        )
    print("\naccuracy (%)")
    print(result.table().to_string())
    groups = result.test_groups.assign(accuracy=lambda t: (100 * t["accuracy"]).round(2))
    names, bias_names = result.data.get("class_names"), result.data.get("bias_names")
    if names:  # the groups by name (CelebA's bias 0 is "Male", for instance)
        groups["label"] = [names[v] for v in groups["label"]]
        groups["bias"] = [bias_names[v] if v >= 0 else "unseen in training" for v in groups["bias"]]
    print("\ntest accuracy per (label, bias) group (%)")
    print(groups.to_string(index=False))
    if result.data.get("stand_in"):
        loud_warning(
            "STAND-IN DATA: a pipeline demonstration, not a result",
            result.data["description"],
            "Synthetic images in the real file layout; these numbers say nothing about "
            f"{config.dataset}.",
        )
    elif not result.data["full_dataset"]:
        loud_warning(
            "These numbers are NOT from the full dataset",
            result.data["description"],
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"results written to {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    grid = run_grid(
        dataset=args.dataset,
        ratios=args.ratios,
        methods=args.methods,
        seeds=args.seeds,
        profile=args.profile,
        out=args.out,
        device=args.device,
        epochs=args.epochs,
        data_root=args.data_root,
        progress=not args.no_progress,
        tune=not args.no_tuning,
        model=args.model,
        schedules=args.schedules,
        protocols=args.protocols,
        selections=args.selection,
        budgets=args.budget,
        **_dataset_options(args),
    )
    results = grid.results
    first = results.iloc[0]
    seeds = results["seed"].nunique()
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    print(f"\nunbiased test accuracy (%), {spread}; {first['dataset']}, {first['source']} data")
    for (schedule, budget, protocol, rule), part in results.groupby(
        ["schedule", "budget", "protocol", "selection"], sort=False
    ):
        epochs = ", ".join(map(str, sorted(part["epochs"].unique())))
        models = ", ".join(part["model"].unique())
        budget_text = "" if budget == "stage" else ", PGD's total epochs for every method"
        print(
            f"\nschedule {schedule} ({epochs} epochs per stage{budget_text}), protocol "
            f"{protocol} ({models}), selection {rule}"
            + (
                " (an oracle rule: it reads the validation split's bias labels)"
                if part["selection_oracle"].iloc[0]
                else ""
            )
        )
        print(summary_table(part, "accuracy").to_string())
    print("\nwall time per run (s), mean over seeds and schedules")
    print(wall_time_table(results, protocol=first["protocol"], budget=first["budget"]).to_string())
    if not grid.tuning.empty:
        chosen = grid.tuning[grid.tuning["chosen"]]
        print("\nhyper-parameters chosen on the validation split (first seed)")
        columns = ["method", "ratio", "schedule", "budget", "protocol", "hparams"]
        columns.append(SELECTION_METRIC)
        print(chosen[columns].to_string(index=False))
    print("\noracles read the training set's bias labels; the other methods do not")
    full = first.get("full_dataset")
    if not (pd.notna(full) and bool(full)):  # the dataset's own word (Splits.is_full)
        loud_warning(
            "These numbers are NOT from the full dataset",
            f"data source: {first['source']}",
        )
    print(f"tidy results: {grid.folder / 'results.csv'}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    args.method = "pgd"
    config = _config(args)
    report = audit(
        config,
        args.out,
        data_root=args.data_root,
        checkpoint_dir=None if args.no_checkpoints else "auto",
        resume=args.resume,
        progress=not args.no_progress,
        per_class=args.top,
    )
    diag = report.summary["sampling"]
    print(f"\naudit of {report.data.description}")
    print(
        f"biased model: {config.model}, {report.summary['model']['epochs']} epochs; "
        f"training accuracy {100 * report.summary['model']['train_accuracy']:.1f}%"
    )
    print(
        f"sampling: effective sample size {diag['effective_sample_size']:.1f} of "
        f"{diag['samples']:,}; {100 * diag['top1pct_mass']:.1f}% of the mass on the top 1%"
    )
    if "bias" in report.summary:
        bias = report.summary["bias"]
        auc = "undefined" if bias["auc"] is None else f"{bias['auc']:.4f}"
        print(
            f"bias.csv (evaluation only): {bias['conflicting']:,} bias-conflicting images hold "
            f"{100 * bias['conflicting_mass']:.1f}% of the mass; ROC AUC of the score {auc}"
        )
    for warning in report.warnings:
        loud_warning("Concentrated sampling", *textwrap.wrap(warning, 90))
    print("\nhighest-scored training images:")
    columns = ["rank", "path", "label", "prediction", "score"]
    columns += ["conflicting"] if "conflicting" in report.scores else []
    print(report.scores.nsmallest(10, "rank")[columns].to_string(index=False))
    print(f"\nreport written to {report.folder}")
    return 0


def _list(args: argparse.Namespace) -> int:
    print("datasets")
    for spec in DATASETS.values():
        stand_in = "stand-in: yes" if spec.stand_in else "stand-in: no"
        print(f"  {spec.name:9s} {spec.title}; sources: {'; '.join(spec.sources)}; {stand_in}")
    print("methods")
    for spec in METHODS.values():
        labels = "reads bias labels (oracle)" if spec.oracle else "reads no bias labels"
        if spec.bias_prior:
            labels += f", is told {spec.bias_prior}"
        source = f" ({spec.source})" if spec.source else ""
        print(f"  {spec.name:9s} {labels}; {spec.changes}{source}")
    return 0


COMMANDS = {"run": _run, "compare": _compare, "audit": _audit, "list": _list}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pgd``; returns the exit status. Plugins (``--plugin`` before
    the sub-command, ``$PGD_PLUGINS``) are imported first, so that what they register has its
    options and choices."""
    try:
        plugins, argv = split_plugin_options(sys.argv[1:] if argv is None else list(argv))
        for plugin in [*plugins_from_environment(), *plugins]:
            load_plugin(plugin)
    except PgdError as error:
        print(f"python -m pgd: error: {error}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    before = os.environ.get(PROGRESS_ENV)
    if getattr(args, "no_progress", False):
        os.environ[PROGRESS_ENV] = "0"  # also the bars of data preparation
    try:
        return COMMANDS[args.command](args)
    except (ValueError, PgdError, PermissionError, FileExistsError, FloatingPointError) as error:
        # the package's own input errors (their messages say the fix); torch's own errors and
        # bugs keep their traceback
        print(f"python -m pgd: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "the same command" + ("" if args.command == "compare" else " with --resume")
        print(f"\ninterrupted: rerun {again} to continue", file=sys.stderr)
        return 130
    finally:
        if before is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = before
