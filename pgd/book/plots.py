"""The book's figures: sample grids by group, score histograms, accuracy bars, training curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from ..datasets.cmnist import PALETTE
from ..datasets.images import IMAGENET_MEAN, IMAGENET_STD
from ..experiments.grid import grid_entries

GROUP_COLOURS = {"bias-aligned": "#4C72B0", "bias-conflicting": "#DD8452"}


def use_book_style() -> None:
    """One look for every figure of the book."""
    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight"})


def _grid(images: torch.Tensor, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """Tile ``(rows * cols, 3, H, W)`` images (missing ones blank) into one ``(h, w, 3)`` array."""
    _, _, h, w = images.shape
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = image.permute(1, 2, 0).numpy()
    return canvas


def plot_samples_by_group(dataset, per_group: int = 6, classes: int = 10) -> Figure:
    """For each class (a row), ``per_group`` bias-aligned samples on the left and as many
    bias-conflicting ones on the right (blank where the split has fewer).

    Args:
        dataset: a split with ``labels``, ``is_conflicting`` and ``(image, ...)`` indexing.
        per_group: samples shown per class and group.
        classes: rows to show.
    """
    shape = dataset[0][0].shape
    fig, axes = plt.subplots(1, 2, figsize=(2 * 0.55 * per_group + 1, 0.6 * classes + 0.8))
    for ax, conflicting, title in zip(
        axes, (False, True), ("bias-aligned", "bias-conflicting"), strict=True
    ):
        tiles = torch.zeros((classes * per_group, *shape))
        blank = torch.ones(shape)
        for label in range(classes):
            chosen = torch.nonzero(
                (dataset.labels == label) & (dataset.is_conflicting == conflicting)
            ).flatten()[:per_group]
            for j in range(per_group):
                tiles[label * per_group + j] = (
                    dataset[int(chosen[j])][0] if j < len(chosen) else blank
                )
        ax.imshow(_grid(tiles, classes, per_group), interpolation="nearest")
        ax.set_title(title, color=GROUP_COLOURS[title], fontweight="bold")
        ax.set_xticks([])
        step = shape[1] + 2
        ax.set_yticks([2 + step * r + shape[1] / 2 for r in range(classes)], labels=range(classes))
        ax.grid(False)
    axes[0].set_ylabel("digit (label)")
    fig.tight_layout()
    return fig


def plot_score_histograms(
    scores: torch.Tensor, is_conflicting: torch.Tensor, ax=None, log_x: bool = True
) -> plt.Axes:
    """Histogram of PGD scores, bias-aligned vs bias-conflicting (each normalised to density)."""
    frame = pd.DataFrame(
        {
            "score": scores.numpy(),
            "group": np.where(is_conflicting.numpy(), "bias-conflicting", "bias-aligned"),
        }
    )
    positive = frame["score"][frame["score"] > 0]
    log_x = log_x and not positive.empty
    if log_x:  # zeros cannot sit on a log axis: show them at the smallest positive score
        frame["score"] = frame["score"].clip(lower=float(positive.min()))
    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    sns.histplot(
        data=frame,
        x="score",
        hue="group",
        stat="density",
        common_norm=False,
        bins=50,
        log_scale=log_x,
        palette=GROUP_COLOURS,
        element="step",
        ax=ax,
    )
    ax.set_xlabel("per-sample gradient norm (PGD score)")
    return ax


def plot_accuracy_bars(
    results: pd.DataFrame,
    x: str = "ratio",
    y: str = "accuracy",
    hue: str = "method",
    ax=None,
) -> plt.Axes:
    """Bars of mean ``y`` per ``x`` and ``hue``, with one dot per run and the standard deviation."""
    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    sns.barplot(data=results, x=x, y=y, hue=hue, errorbar="sd", capsize=0.1, alpha=0.85, ax=ax)
    sns.stripplot(
        data=results,
        x=x,
        y=y,
        hue=hue,
        dodge=True,
        palette="dark:black",
        size=3,
        legend=False,
        ax=ax,
    )
    ax.set_ylim(0, 100 if results[y].max() > 1 else 1)
    return ax


def plot_training_curves(
    histories: dict[str, pd.DataFrame], metric: str = "valid_accuracy"
) -> Figure:
    """One line per training stage: ``metric`` against the epoch, stages placed end to end."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    offset = 0
    for stage, history in histories.items():
        epochs = history["epoch"] + 1 + offset
        ax.plot(epochs, history[metric], label=stage)
        best = history.attrs.get("best_epoch")
        if best is not None and best >= 0:
            ax.scatter(
                [best + 1 + offset], [history[metric].iloc[best]], marker="*", s=120, zorder=3
            )
        offset += len(history)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend()
    return fig


def plot_group_heatmap(groups: pd.DataFrame, ax=None, title: str | None = None) -> plt.Axes:
    """Accuracy (%) of every (label, bias) group as a heatmap: rows are labels, columns the bias
    attribute (for Colored MNIST: the colour's class). A biased model is bright on the diagonal.
    Sized so that the hundred numbers of Colored MNIST stay readable on a page."""
    table = groups.pivot(index="label", columns="bias", values="accuracy") * 100
    ax = ax or plt.subplots(figsize=(8.5, 7))[1]
    sns.heatmap(
        table,
        vmin=0,
        vmax=100,
        cmap="viridis",
        annot=True,
        fmt=".0f",
        ax=ax,
        cbar_kws={"label": "accuracy (%)"},
        annot_kws={"size": 10},
    )
    ax.set_xlabel("colour (class whose colour it is)")
    ax.set_ylabel("digit (label)")
    if title:
        ax.set_title(title)
    return ax


def plot_palette() -> Figure:
    """The ten colours of Colored MNIST, labelled with the class each one goes with."""
    fig, ax = plt.subplots(figsize=(7, 1.1))
    ax.imshow(PALETTE[None].numpy(), aspect="auto")
    ax.set_xticks(range(len(PALETTE)), labels=[f"class {k}" for k in range(len(PALETTE))])
    ax.tick_params(axis="x", labelsize=8)
    ax.set_yticks([])
    ax.grid(False)
    return fig


def plot_recoloured(images: torch.Tensor, predicted: torch.Tensor, label: int) -> Figure:
    """One digit in every colour, each titled with the model's prediction (red when wrong).

    Args:
        images: ``(K, 3, H, W)``, e.g. from :func:`pgd.datasets.cmnist.recolour`.
        predicted: ``(K,)`` predicted classes. label: the digit's true class.
    """
    fig, axes = plt.subplots(1, len(images), figsize=(1.1 * len(images), 1.6))
    for k, (ax, image, guess) in enumerate(zip(axes, images, predicted.tolist(), strict=True)):
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"says {guess}", fontsize=9, color="black" if guess == label else "#C44E52")
        ax.set_xlabel(f"colour {k}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.suptitle(f"a test digit labelled {label}, painted in each colour", fontsize=10, y=1.05)
    return fig


def plot_conflicting_share(
    rhos: tuple[float, ...], share, measured: tuple[float, float, str] | None = None, ax=None
) -> plt.Axes:
    """The share of sampling mass on bias-conflicting samples, ``share(rho, r)``, against the
    score ratio ``r`` (log scale, up to ten times the measured ratio or 1,000), one curve per
    conflicting share ``rho``; ``measured`` = ``(r, mass, label)`` adds a measured point.

    Args:
        rhos: conflicting shares, e.g. ``(0.005, 0.01, 0.05)``.
        share: ``share(rho, r) -> float`` (e.g. :func:`pgd.book.theory.conflicting_share`).
    """
    top = max(1_000.0, 10 * measured[0]) if measured else 1_000.0
    ratios = np.logspace(0, np.log10(top), 200)
    ax = ax or plt.subplots(figsize=(6.5, 3.8))[1]
    for rho in rhos:
        ax.plot(ratios, [share(rho, r) for r in ratios], label=rf"$\rho$ = {rho:.1%}")
    if measured:
        r, mass, label = measured
        ax.scatter([r], [mass], color="black", zorder=3, label=label)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("score ratio r (mean conflicting score / mean aligned score)")
    ax.set_ylabel("mass on conflicting samples")
    ax.legend(fontsize="small")
    return ax


def plot_benchmark(table: pd.DataFrame, ax=None) -> plt.Axes:
    """Time per batch relative to a plain forward+backward pass, per model and method (log
    scale), from the CSV written by ``benchmarks/per_sample_norms.py``."""
    ran = table.dropna(subset=["time_vs_floor"])
    ax = ax or plt.subplots(figsize=(8, 3.8))[1]
    sns.barplot(data=ran, x="model", y="time_vs_floor", hue="method", ax=ax, alpha=0.9)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_ylabel("time / (forward + backward)")
    ax.set_xlabel("")
    ax.legend(title=None, ncol=2, fontsize="small")
    return ax


def plot_score_agreement(
    first: torch.Tensor,
    second: torch.Tensor,
    is_conflicting: torch.Tensor,
    labels: tuple[str, str] = ("last-layer score", "whole-network score"),
    ax=None,
) -> plt.Axes:
    """Two scores of the same samples against each other (log-log), coloured by group."""
    frame = pd.DataFrame(
        {
            labels[0]: first.clamp(min=1e-12).numpy(),
            labels[1]: second.clamp(min=1e-12).numpy(),
            "group": np.where(is_conflicting.numpy(), "bias-conflicting", "bias-aligned"),
        }
    ).sort_values("group")  # conflicting samples drawn last, on top
    ax = ax or plt.subplots(figsize=(5, 4.5))[1]
    sns.scatterplot(
        data=frame,
        x=labels[0],
        y=labels[1],
        hue="group",
        palette=GROUP_COLOURS,
        s=10,
        alpha=0.6,
        linewidth=0,
        ax=ax,
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    return ax


def _denormalise(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)


def _group_label(t: int, b: int, class_names, bias_names) -> str:
    """Target and bias on lines of their own, so that four groups fit side by side."""
    kind = "aligned" if t == b else "conflicting"
    return f"{class_names[t]}\n/ {bias_names[b]}\n(bias-{kind})"


def _groups_in_order(labels: list[int], biases: list[int]) -> list[tuple[int, int]]:
    """The (target, bias) pairs present, in the order of the group tables."""
    return sorted(set(zip(labels, biases, strict=True)))


def plot_image_groups(splits, split: str = "train", per_group: int = 6) -> Figure:
    """A row of ``per_group`` images for each (target, bias) group of a CelebA or BFFHQ split
    (:class:`pgd.datasets.images.ImageSplits`), un-augmented and un-normalised, rows named by
    group."""
    dataset = getattr(splits, split).without_augmentation()
    groups = [(t, b) for t in range(len(splits.class_names)) for b in range(len(splits.bias_names))]
    shape = (3, splits.image_size, splits.image_size)
    tiles = torch.ones((len(groups) * per_group, *shape))
    for row, (t, b) in enumerate(groups):
        chosen = torch.nonzero((dataset.labels == t) & (dataset.bias_labels == b)).flatten()
        for j, index in enumerate(chosen[:per_group].tolist()):
            tiles[row * per_group + j] = _denormalise(dataset[index][0])
    fig, ax = plt.subplots(figsize=(1.1 * per_group + 2.2, 1.15 * len(groups) + 0.4))
    ax.imshow(_grid(tiles, len(groups), per_group), interpolation="nearest")
    step = splits.image_size + 2
    ax.set_yticks(
        [2 + step * r + splits.image_size / 2 for r in range(len(groups))],
        labels=[_group_label(t, b, splits.class_names, splits.bias_names) for t, b in groups],
    )
    ax.set_xticks([])
    ax.grid(False)
    ax.set_title(f"{splits.dataset} {split} images by (target, bias) group")
    fig.tight_layout()
    return fig


def plot_scores_by_group(
    scores: torch.Tensor, dataset, class_names, bias_names, ax=None
) -> plt.Axes:
    """PGD scores of every training sample, one dot each, one column per (target, bias) group
    (log scale), with the group's size in its label."""
    labels, biases = dataset.labels.tolist(), dataset.bias_labels.tolist()
    frame = pd.DataFrame(
        {
            "score": scores.numpy(),
            "group": [
                _group_label(t, b, class_names, bias_names)
                for t, b in zip(labels, biases, strict=True)
            ],
        }
    )
    sizes = frame["group"].value_counts()
    frame["group"] = frame["group"].map(lambda g: f"{g}\nn = {sizes[g]:,}")
    positive = frame["score"][frame["score"] > 0]
    if not positive.empty:
        frame["score"] = frame["score"].clip(lower=float(positive.min()))
    order = [
        f"{label}\nn = {sizes[label]:,}"
        for label in (
            _group_label(t, b, class_names, bias_names) for t, b in _groups_in_order(labels, biases)
        )
    ]
    ax = ax or plt.subplots(figsize=(8, 4.2))[1]
    sns.stripplot(
        data=frame, x="group", y="score", order=order, log_scale=True, ax=ax, size=2, alpha=0.5
    )
    ax.set_xlabel("")
    ax.set_ylabel("PGD score (gradient norm)")
    return ax


def plot_group_accuracies(tables: dict[str, pd.DataFrame], class_names, bias_names, ax=None):
    """Test accuracy per (target, bias) group, one bar per method.

    Args:
        tables: method name -> :func:`pgd.training.metrics.group_accuracy_table` of its test
            predictions.
    """
    rows = []
    for method, table in tables.items():
        for record in table.itertuples():
            group = _group_label(int(record.label), int(record.bias), class_names, bias_names)
            rows.append(
                {
                    "method": method,
                    "group": f"{group}\nn = {record.samples}",
                    "accuracy (%)": 100 * record.accuracy,
                }
            )
    frame = pd.DataFrame(rows)
    ax = ax or plt.subplots(figsize=(8, 4.2))[1]
    sns.barplot(data=frame, x="group", y="accuracy (%)", hue="method", ax=ax)
    ax.set_ylim(0, 100)
    ax.set_xlabel("")
    ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return ax


def plot_accuracy_vs_ratio(
    results: pd.DataFrame,
    y: str = "accuracy",
    labels: dict[str, str] | None = None,
    ax=None,
) -> plt.Axes:
    """Mean ``y`` against the bias-conflicting ratio (log scale), one line per method with the
    standard deviation over seeds as a band; oracles (optional column ``oracle``) dashed.
    ``results``: the tidy table of :func:`pgd.experiments.compare.run_grid`, or rows of
    :meth:`pgd.experiments.pipeline.ExperimentResult.row`."""
    frame = results.assign(ratio_pct=100 * results["ratio"])
    if labels:
        frame["method"] = frame["method"].map(lambda m: labels.get(m, m))
    order = list(dict.fromkeys(frame["method"]))
    flags = frame["oracle"] if "oracle" in frame else [False] * len(frame)
    oracle = dict(zip(frame["method"], flags, strict=True))
    ax = ax or plt.subplots(figsize=(7.5, 4))[1]
    palette = dict(zip(order, sns.color_palette("colorblind", len(order)), strict=True))
    for method in order:
        sns.lineplot(
            data=frame[frame["method"] == method],
            x="ratio_pct",
            y=y,
            errorbar="sd",
            marker="o",
            color=palette[method],
            linestyle="--" if oracle[method] else "-",
            label=method,
            ax=ax,
        )
    ax.set_xscale("log")
    ticks = sorted(frame["ratio_pct"].unique())
    ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("bias-conflicting samples in the training set")
    ax.set_ylabel(y.replace("_", " ") + " (%)")
    ax.legend(fontsize="small", ncol=2)
    return ax


def plot_folder_examples(data, per_class: int = 6, conflicting: int = 2, seed: int = 0) -> Figure:
    """Training images of an image folder (:class:`pgd.datasets.folder.FolderSplits`), one row
    per class: ``per_class - conflicting`` bias-aligned ones and ``conflicting``
    bias-conflicting ones (marked), chosen at random with ``seed``, titled with their bias value
    where ``bias.csv`` gives one."""
    train, names = data.train, data.class_names
    generator = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(
        len(names), per_class, figsize=(1.2 * per_class + 1.6, 1.25 * len(names)), squeeze=False
    )
    values = data.bias_values["train"] if data.bias_values else None
    for row, name in enumerate(names):
        members = torch.nonzero(train.labels == row).flatten()
        flags = train.is_conflicting[members]
        odd, usual = members[flags], members[~flags]
        picks = usual[torch.randperm(len(usual), generator=generator)[: per_class - conflicting]]
        chosen = (
            picks.tolist()
            + odd[torch.randperm(len(odd), generator=generator)[:conflicting]].tolist()
        )
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(chosen):
                ax.axis("off")
                continue
            index = chosen[col]
            ax.imshow(train.images[index].permute(1, 2, 0).numpy())
            title = values[index] if values else ""
            if bool(train.is_conflicting[index]):
                title += " ✱"
            ax.set_title(title, fontsize=7)
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("training images per class (title: bias value from bias.csv; ✱ bias-conflicting)")
    fig.tight_layout()
    return fig


#: How the settings plot names the selection rules (x-axis labels have little room).
RULE_LABELS = {
    "valid_loss": "val. loss",
    "valid_accuracy": "val. acc.",
    "last": "last",
    "valid_group_accuracy": "val. groups",
}


def plot_settings(
    results: pd.DataFrame,
    *,
    ratio: float | None,
    methods: list[str],
    metric: str = "accuracy",
    title: str | None = None,
) -> Figure:
    """Mean ``metric`` (with one standard deviation over seeds) of each of ``methods`` under
    every training setting of a comparison grid, at one conflicting ``ratio``: one panel per
    schedule, one column per (protocol, selection rule), so that a reader sees how much a
    method's number moves with the setting alone.

    Args:
        results: the tidy table of :func:`pgd.experiments.compare.run_grid`.
        ratio: the conflicting ratio to show (None: all rows, as on CelebA).
        methods: grid method names, in the legend's order.
        title: the figure's title, above the panels' own (one per schedule).

    Returns:
        The figure (its axes share the y axis; the legend sits below them).
    """
    labels = grid_entries()[1]  # read now: a method a plugin registered has its label
    frame = results if ratio is None else results[results["ratio"] == ratio]
    frame = frame[frame["method"].isin(methods)]
    frame = frame.assign(
        setting=frame["protocol"] + "\n" + frame["selection"].map(RULE_LABELS),
        method=frame["method"].map(labels),
    )
    schedules = list(dict.fromkeys(frame["schedule"]))
    fig, axes = plt.subplots(
        1, len(schedules), figsize=(4.8 * len(schedules), 4.4), sharey=True, squeeze=False
    )
    present = set(frame["method"])
    hue_order = [labels[m] for m in methods if labels[m] in present]
    for ax, schedule in zip(axes[0], schedules, strict=True):
        part = frame[frame["schedule"] == schedule]
        sns.pointplot(
            data=part,
            x="setting",
            y=metric,
            hue="method",
            hue_order=hue_order,
            order=list(dict.fromkeys(part["setting"])),
            errorbar="sd",
            dodge=0.5,
            linestyle="none",
            markers="o",
            palette="colorblind",
            ax=ax,
        )
        ax.set_title(f"{schedule} schedule")
        ax.set_xlabel("protocol, selection rule")
        ax.set_ylabel(metric.replace("_", " ") + " (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.get_legend().remove()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
