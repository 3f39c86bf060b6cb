"""``python -m pgd audit``: PGD's first two steps as a tool for finding what a model gets wrong.

PGD's biased model and its per-sample gradient norms need no bias labels. On any registered
dataset (your own image folder included) the audit trains the biased model (or reads it back
from its checkpoint), scores every training image, and writes a report into a folder:

* ``scores.csv``: one row per training image: path, label, the biased model's prediction, its
  loss, the score, the rank (1 = highest) and PGD's sampling probability (where bias labels are
  known, also the bias value and whether the image is bias-conflicting);
* ``top_scored.png``: the highest-scored images of every class, with their scores;
* ``score_histograms.png``: the distribution of the scores, per class;
* ``summary.md`` and ``summary.json``: how concentrated PGD's sampling would be (effective sample
  size, distinct images per epoch, mass on the top 1%), the highest-scored images, and, where
  bias labels are known (an image folder's ``bias.csv``, read for this report only), how well the
  score finds the bias-conflicting images (ROC AUC) and the sampling mass per (class, bias) group.

High scores mark the images the biased model finds hardest: bias-conflicting ones, but also
ambiguous and mislabeled-looking ones, which PGD up-weights just the same. Look at the top of the
ranking before trusting a resampled model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from ..core.runtime import provenance, resolve_device, runs_root
from ..core.storage import atomic_write_text
from ..datasets.base import Splits, without_augmentation
from ..datasets.images import IMAGENET_MEAN, IMAGENET_STD, ImageFileDataset
from ..gradients.scores import grad_norm_scores
from ..methods import pgd as pgd_steps
from ..methods.sampling import sampling_diagnostics, sampling_probabilities, small_sample_warning
from ..training.metrics import predict, roc_auc
from .config import ExperimentConfig
from .pipeline import load_data, trainer

#: The file that marks a folder as an audit report (an existing report is replaced; any other
#: non-empty folder is refused).
MARKER = ".pgd-audit"
FILES = ("scores.csv", "top_scored.png", "score_histograms.png", "summary.md", "summary.json")


@dataclass
class AuditReport:
    """What :func:`audit` found (and wrote into ``folder``).

    Attributes:
        scores: one row per training image (the content of ``scores.csv``).
        summary: the content of ``summary.json``: data, model, sampling diagnostics, and with
            known bias labels the ROC AUC and the mass per group.
        figures: ``{"top_scored": Figure, "score_histograms": Figure}``.
        model: the biased model.
        data: the dataset's splits.
        folder: where the report is.
    """

    scores: pd.DataFrame
    summary: dict[str, Any]
    figures: dict[str, Figure]
    model: nn.Module
    data: Splits
    folder: Path
    warnings: list[str] = field(default_factory=list)


def check_report_folder(out: str | os.PathLike) -> Path:
    """``out`` if it may receive a report: missing, empty, or a previous report.

    Raises:
        FileExistsError: ``out`` holds other files (nothing is overwritten).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder: choose a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise FileExistsError(
            f"{out} already holds files and is not a previous audit report: refusing to write "
            "into it. Choose a new folder (or delete this one)."
        )
    return out


def class_names(data: Splits) -> list[str]:
    names = data.class_names
    return list(names) if names else [str(c) for c in range(data.train.num_classes)]


def sample_paths(dataset: Any) -> list[str]:
    """What identifies each sample: its file (relative to the dataset's folder where known),
    else ``<split>[<index>]``."""
    if hasattr(dataset, "paths"):
        return list(dataset.paths)
    if isinstance(dataset, ImageFileDataset):
        return list(dataset.files)
    return [f"{dataset.split}[{i}]" for i in range(len(dataset))]


def bias_known(data: Splits) -> bool:
    return bool(data.has_bias)


def _bias_names(data: Splits) -> list[str] | None:
    """The bias value of every training sample, as text (None where no bias is known)."""
    if not bias_known(data):
        return None
    values = data.bias_values
    if values:
        return list(values["train"])
    names = data.bias_names
    codes = data.train.bias_labels.tolist()
    return [names[c] if names else str(c) for c in codes]


def display_image(dataset: Any, index: int) -> np.ndarray:
    """Training image ``index`` as ``(H, W, 3)`` floats in [0, 1], for a figure."""
    if hasattr(dataset, "images"):  # an image folder: decoded uint8
        return dataset.images[index].permute(1, 2, 0).float().div(255).numpy()
    image = dataset[index][0].float()
    if isinstance(dataset, ImageFileDataset):
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        image = image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + mean
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def top_scored_figure(
    data: Splits, table: pd.DataFrame, per_class: int = 8, known: bool = False
) -> Figure:
    """The ``per_class`` highest-scored training images of every class, one row per class."""
    names = class_names(data)
    train = without_augmentation(data.train)
    fig = Figure(figsize=(1.3 * per_class + 1.5, 1.45 * len(names) + 0.6), layout="constrained")
    axes = fig.subplots(len(names), per_class, squeeze=False)
    for row, name in enumerate(names):
        top = table[table["label"] == name].nsmallest(per_class, "rank")
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if col >= len(top):
                continue
            item = top.iloc[col]
            ax.imshow(display_image(train, int(item["index"])))
            text = f"{item['score']:.3g}"
            if known and item["conflicting"]:
                text += " ✱"
            ax.set_title(text, fontsize=8)
            if item["prediction"] != name:
                ax.set_xlabel(f"→ {item['prediction']}", fontsize=7)
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        axes[row, 0].spines["left"].set_visible(False)
    title = "highest-scored training images per class (score above; → the biased model's answer"
    title += "; ✱ bias-conflicting)" if known else ")"
    fig.suptitle(title, fontsize=10)
    return fig


def histograms_figure(table: pd.DataFrame, names: list[str], known: bool = False) -> Figure:
    """The scores of every class, on a logarithmic axis (bias-conflicting images apart where
    known)."""
    columns = min(5, len(names))
    rows = -(-len(names) // columns)
    fig = Figure(figsize=(2.6 * columns, 2.0 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True)
    positive = table["score"][table["score"] > 0]
    low = float(positive.min()) if len(positive) else 1e-6
    high = float(table["score"].max()) if len(table) else 1.0
    bins = np.geomspace(low, max(high, low * 10), 40)
    for ax, name in zip(axes.flat, names, strict=False):
        scores = table[table["label"] == name]
        groups = (
            [
                ("aligned", scores[~scores["conflicting"]]),
                ("conflicting", scores[scores["conflicting"]]),
            ]
            if known
            else [("all", scores)]
        )
        for label, part in groups:
            if len(part):
                ax.hist(part["score"].clip(lower=low), bins=bins, alpha=0.7, label=label)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if known:
        axes.flat[0].legend(fontsize=7)
    fig.supxlabel("score (per-sample gradient norm, log scale)", fontsize=9)
    fig.supylabel("training images", fontsize=9)
    return fig


def _markdown_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _summary_markdown(summary: dict[str, Any], table: pd.DataFrame, warning: str | None) -> str:
    diag = summary["sampling"]
    lines = [
        "# PGD audit",
        "",
        f"- data: {summary['data']['description']}",
        f"- biased model: {summary['model']['name']}, {summary['model']['epochs']} epochs with "
        f"GCE, seed {summary['model']['seed']}; it classifies "
        f"{100 * summary['model']['train_accuracy']:.1f}% of the training images correctly",
        f"- score: per-sample gradient norm over {summary['score']}",
        f"- written by pgd {summary['provenance'].get('pgd code', '?')} on "
        f"{summary['provenance'].get('device', '?')}",
        "",
        "## How concentrated PGD's sampling would be",
        "",
        "| training images | effective sample size | share | distinct images per epoch | "
        "mass on the top 1% |",
        "|---|---|---|---|---|",
        f"| {diag['samples']:,} | {diag['effective_sample_size']:.1f} | "
        f"{100 * diag['effective_share']:.2f}% | {diag['distinct_per_epoch']:.0f} | "
        f"{100 * diag['top1pct_mass']:.1f}% |",
        "",
    ]
    if warning:
        lines += [f"**Warning:** {warning}", ""]
    lines += ["## The highest-scored images", ""]
    columns = ["rank", "path", "label", "prediction", "score", "probability"]
    if "bias" in table:
        columns += ["bias", "conflicting"]
    top = table.nsmallest(20, "rank")[columns].copy()
    top["score"] = top["score"].map("{:.4g}".format)
    top["probability"] = top["probability"].map("{:.3g}".format)
    lines += [_markdown_table(top), ""]
    per_class = pd.DataFrame(summary["classes"])
    lines += ["## Per class", "", _markdown_table(per_class.round(4)), ""]
    if "bias" in summary:
        bias = summary["bias"]
        lines += [
            "## Against the bias labels (evaluation only)",
            "",
            f"- bias-conflicting training images: {bias['conflicting']:,} "
            f"({100 * bias['conflicting_share']:.2f}%); sampling mass on them: "
            f"{100 * bias['conflicting_mass']:.1f}%",
            f"- ROC AUC of the score for 'is bias-conflicting': {bias['auc']:.4f}"
            if bias["auc"] is not None
            else "- ROC AUC: undefined (no conflicting or no aligned image)",
            "",
            _markdown_table(pd.DataFrame(bias["group_mass"]).round(6)),
            "",
        ]
    return "\n".join(lines)


def audit(
    config: ExperimentConfig,
    out: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = "auto",
    resume: bool = False,
    progress: bool | None = None,
    per_class: int = 8,
    data: Splits | None = None,
) -> AuditReport:
    """Train (or read back) PGD's biased model on ``config``'s data, score every training image,
    and write the report described in the module docstring into ``out``.

    Args:
        config: dataset, model, profile, seed and PGD's score settings (the method must be pgd).
        out: the report folder: new, empty, or a previous report (replaced).
        data_root: the data root (for ``folder``: the image folder itself).
        checkpoint_dir: where the biased model's checkpoint goes (``auto``: ``$PGD_RUNS/<run
            name>``, the same as ``python -m pgd run`` with the same settings, so each reuses
            the other's biased model), or None.
        resume: read the biased model back from its checkpoint where it is there.
        progress: progress bars (training epochs, scoring).
        per_class: images per class in ``top_scored.png``.
        data: splits to use instead of loading ``config``'s dataset.

    Raises:
        FileExistsError: ``out`` holds files and is not a previous report.
        ValueError: ``config.method`` is not ``pgd``.
    """
    if config.method != "pgd":
        raise ValueError(
            f"the audit runs PGD's first two steps: use method 'pgd', not {config.method!r}"
        )
    out = check_report_folder(out)
    if data is None:
        data = load_data(config, data_root)
    if checkpoint_dir == "auto":
        folder: Path | None = runs_root() / config.name(data.source)
    else:
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    steps = trainer(config, data, folder=folder, resume=resume, progress=progress)
    biased = pgd_steps.train_biased(steps).model.eval()
    train = without_augmentation(data.train)
    params = config.params
    scores = grad_norm_scores(
        biased,
        train,
        layers=params["score_layers"],
        p=params["score_p"],
        include_bias=params["score_bias"],
        batch_size=config.dataset_spec.score_batch_size,
        progress=progress,
        desc="scoring the training images",
    )
    device = resolve_device(config.device)
    predicted = predict(biased, train, device=device)
    probs = sampling_probabilities(scores)
    names = class_names(data)
    known = bias_known(data)
    labels = data.train.labels
    table = pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "path": sample_paths(data.train),
            "label": [names[c] for c in labels.tolist()],
            "prediction": [names[c] for c in predicted.predicted.tolist()],
            "loss": predicted.losses.numpy(),
            "score": scores.numpy(),
            "probability": probs.numpy(),
        }
    )
    table["rank"] = table["score"].rank(ascending=False, method="first").astype(int)
    conflicting = data.train.is_conflicting
    diag = sampling_diagnostics(probs)
    classes = []
    for c, name in enumerate(names):
        mask = labels == c
        classes.append(
            {
                "class": name,
                "images": int(mask.sum()),
                "mean score": float(scores[mask].mean()) if mask.any() else float("nan"),
                "sampling mass": float(probs[mask].sum()),
                "biased model accuracy": float(predicted.correct[mask].float().mean())
                if mask.any()
                else float("nan"),
            }
        )
    summary: dict[str, Any] = {
        "data": {
            "dataset": config.dataset,
            "description": data.description,
            "train_samples": len(labels),
        },
        "model": {
            "name": config.model,
            "epochs": config.stage_epochs(len(labels)),
            "seed": config.seed,
            "train_accuracy": float(predicted.correct.float().mean()),
            "checkpoint": str(folder / "biased.pt") if folder is not None else None,
        },
        "score": "the last layer's weight"
        if params["score_layers"] == "last"
        else "all parameters",
        "sampling": diag,
        "classes": classes,
        "provenance": provenance(device),
    }
    if known:
        table["bias"] = _bias_names(data)
        table["conflicting"] = conflicting.numpy()
        with_groups = sampling_diagnostics(probs, labels=labels, bias_labels=data.train.bias_labels)
        group_mass = pd.DataFrame(with_groups["group_mass"])
        group_mass["label"] = [names[c] for c in group_mass["label"]]
        if data.aligned_class:
            group_mass = group_mass.rename(columns={"bias": "bias goes with"})
            group_mass["bias goes with"] = [
                names[c] if c >= 0 else "(unseen in training)" for c in group_mass["bias goes with"]
            ]
        n_conf = int(conflicting.sum())
        auc = roc_auc(scores, conflicting) if 0 < n_conf < len(labels) else None
        summary["bias"] = {
            "conflicting": n_conf,
            "conflicting_share": n_conf / len(labels),
            "conflicting_mass": float(probs[conflicting].sum()),
            "auc": auc,
            "group_mass": group_mass.to_dict(orient="records"),
        }
    warning = small_sample_warning(diag)
    figures = {
        "top_scored": top_scored_figure(data, table, per_class=per_class, known=known),
        "score_histograms": histograms_figure(table, names, known=known),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a report of python -m pgd audit; it may be replaced by another\n")
    ordered = ["path", "label", "prediction", "loss", "score", "rank", "probability"]
    ordered += [c for c in ("bias", "conflicting") if c in table]
    atomic_write_text(table[ordered].to_csv(index=False), out / "scores.csv")
    for name, figure in figures.items():
        figure.savefig(out / f"{name}.png", dpi=110)
    atomic_write_text(json.dumps(summary, indent=1, default=str) + "\n", out / "summary.json")
    atomic_write_text(_summary_markdown(summary, table, warning) + "\n", out / "summary.md")
    return AuditReport(table, summary, figures, biased, data, out, [warning] if warning else [])
