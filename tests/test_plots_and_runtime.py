from __future__ import annotations

import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from pgd.book import plots
from pgd.book.notebook import mean_spread, notebook_setup, provenance_table
from pgd.core.profiles import get_profile
from pgd.core.runtime import cpu_threads, provenance, resolve_device
from pgd.models import build_model
from pgd.training.metrics import group_accuracy_table, predict

ROOT = Path(__file__).resolve().parents[1]


def test_sample_grid_shows_aligned_and_conflicting_panels(cmnist):
    fig = plots.plot_samples_by_group(cmnist.train, per_group=4)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["bias-aligned", "bias-conflicting"]
    image = fig.axes[1].images[0].get_array()
    assert image.shape == (10 * 30 + 2, 4 * 30 + 2, 3)
    plt.close(fig)


def test_score_histogram_has_one_series_per_group():
    scores = torch.cat([torch.rand(50) * 0.1, torch.rand(5) + 1])
    conflicting = torch.arange(55) >= 50
    ax = plots.plot_score_histograms(scores, conflicting)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["bias-aligned", "bias-conflicting"]
    plt.close(ax.figure)


def test_accuracy_bars_and_heatmap_draw_from_the_data(cmnist):
    frame = pd.DataFrame(
        {
            "ratio": [0.01, 0.01, 0.05, 0.05],
            "method": ["a", "b", "a", "b"],
            "accuracy": [10, 20, 30, 40],
        }
    )
    ax = plots.plot_accuracy_bars(frame)
    heights = sorted(round(p.get_height()) for p in ax.patches if p.get_height() > 0)
    assert heights == [10, 20, 30, 40]
    plt.close(ax.figure)
    torch.manual_seed(0)
    groups = group_accuracy_table(predict(build_model("mlp"), cmnist.test))
    ax = plots.plot_group_heatmap(groups)
    assert ax.collections[0].get_array().size == len(groups) == 100
    plt.close(ax.figure)


def test_provenance_names_device_versions_and_code():
    info = provenance("cpu")
    assert info["device"].startswith("cpu")
    assert info["torch"] == torch.__version__.split("+")[0] or info["torch"].startswith("2.")
    assert len(info["pgd code"]) == 12
    assert info["platform"] == f"{platform.system()} {platform.machine()}"  # no kernel string
    assert platform.release() not in " ".join(info.values())
    table = provenance_table(get_profile("quick"), resolve_device("cpu"), "some data")
    assert table.loc["data", "value"] == "some data"


def test_cpu_threads_says_thread_for_one_and_threads_for_more():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_threads() == "1 thread"
        assert provenance("cpu")["device"].startswith("cpu (1 thread, ")
        torch.set_num_threads(2)
        assert cpu_threads() == "2 threads"
    finally:
        torch.set_num_threads(before)


def test_provenance_gives_the_epochs_the_chapter_trained_not_the_profile_s_most():
    quick, full = get_profile("quick"), get_profile("full")
    cpu = resolve_device("cpu")
    assert provenance_table(quick, cpu, "d", epochs=3).loc["profile", "value"] == (
        "quick (3 epochs per stage)"
    )
    assert provenance_table(quick, cpu, "d", epochs=1).loc["profile", "value"] == (
        "quick (1 epoch per stage)"
    )
    assert provenance_table(quick, cpu, "d").loc["profile", "value"] == (
        "quick (at most 20 epochs per stage)"
    )
    assert provenance_table(full, cpu, "d").loc["profile", "value"] == "full (100 epochs per stage)"


def test_one_seed_gets_a_mean_without_a_spread():
    assert mean_spread([36.3, 38.4, 38.9]) == "37.9 ± 1.4"
    assert mean_spread([36.3, 38.4, 38.9], 2, signed=True, unit=" points", over="seed") == (
        "+37.87 ± 1.38 points (mean ± std over 3 seeds)"
    )
    assert mean_spread(pd.Series([5.0]), 2, signed=True, unit=" points", over="seed") == (
        "+5.00 points (one seed)"
    )
    assert "nan" not in mean_spread([70.0]) and mean_spread([70.0]) == "70.0"
    with pytest.raises(ValueError, match="at least one value"):
        mean_spread([])


def test_notebook_setup_reports_profile_device_and_folders(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PGD_PROFILE", "full")
    env = notebook_setup()
    out = capsys.readouterr().out
    assert env.profile.name == "full" and not env.colab
    assert env.data_root == (tmp_path / "data").resolve()
    assert "profile 'full'" in out and "GPU" in out


@pytest.mark.parametrize("name", ["tpu", "gpu0"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(name)


def test_score_histogram_survives_zero_scores():
    scores = torch.tensor([0.0, 0.0, 0.5, 2.0])
    ax = plots.plot_score_histograms(scores, torch.tensor([False, False, False, True]))
    assert ax.get_xscale() == "log"
    plt.close(ax.figure)
    ax = plots.plot_score_histograms(torch.zeros(4), torch.tensor([False, False, True, True]))
    assert ax.get_xscale() == "linear"
    plt.close(ax.figure)


def test_committed_benchmark_results_load_and_plot():
    from pgd.book.notebook import benchmark_results

    table = benchmark_results("per_sample_norms_cpu.csv")
    assert {"model", "method", "ms", "time_vs_floor", "machine"} <= set(table.columns)
    assert set(table["model"]) == {"mlp", "cnn", "resnet18", "vit"}
    ax = plots.plot_benchmark(table)
    assert len(ax.patches) >= table["time_vs_floor"].notna().sum()
    plt.close(ax.figure)


def test_missing_benchmark_results_say_how_to_make_them(monkeypatch):
    from pgd.book import notebook

    monkeypatch.setattr(notebook, "BENCHMARK_URL", "file:///nonexistent/")
    with pytest.raises(FileNotFoundError, match="make bench"):
        notebook.benchmark_results("no_such_table.csv")


def test_results_are_read_from_the_installed_copy_without_the_checkout_or_network(
    tmp_path, monkeypatch
):
    """On Colab the package is pip-installed: the tables come with it (pyproject's data-files)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    from pgd.book import notebook

    assert notebook.RESULTS_FOLDERS[0] == ROOT / "benchmarks" / "results"  # the checkout first
    installed = tmp_path / "share" / "pgd-book" / "results"
    installed.mkdir(parents=True)
    (installed / "table.csv").write_text("a,b\n1,2\n")
    monkeypatch.setattr(notebook, "RESULTS_FOLDERS", (tmp_path / "no-checkout", installed))
    monkeypatch.setattr(notebook, "BENCHMARK_URL", "file:///nonexistent/")
    assert notebook.benchmark_results("table.csv").to_dict("list") == {"a": [1], "b": [2]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = project["tool"]["setuptools"]["data-files"]["share/pgd-book/results"]
    assert shipped == ["benchmarks/results/*.csv"]


def test_score_agreement_plot_has_both_groups():
    conflicting = torch.arange(40) >= 35
    ax = plots.plot_score_agreement(torch.rand(40), torch.rand(40) + 1, conflicting)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert set(labels) >= {"bias-aligned", "bias-conflicting"}
    plt.close(ax.figure)


def test_resnet18_is_torchvisions_untrained_model():
    from pgd.models import resnet18

    model = resnet18(num_classes=3).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert type(model).__module__.startswith("torchvision")


def test_warnings_print_briefly_without_the_file_they_came_from(capsys, monkeypatch):
    import warnings

    from pgd.core.runtime import ConcentratedSamplingWarning, show_warnings_briefly

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored afterwards
    show_warnings_briefly()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("word " * 40, ConcentratedSamplingWarning, stacklevel=1)
    shown = capsys.readouterr().err
    assert shown.startswith("ConcentratedSamplingWarning: word")
    assert ".py" not in shown and max(len(line) for line in shown.splitlines()) <= 92


def test_paths_are_shown_relative_to_the_working_folder_or_home(tmp_path, monkeypatch):
    from pathlib import Path

    from pgd.core import runtime
    from pgd.core.runtime import display_path

    # outside any project, as on a reader's machine (make test keeps tmp_path inside this one)
    monkeypatch.setattr(runtime, "_project_root", lambda start: None)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert display_path(tmp_path / "work" / "runs" / "a") == "runs/a"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert display_path(tmp_path / "home" / "data") == "~/data"
    assert display_path(Path("/usr/share")) == "/usr/share"


def test_paths_in_the_same_project_are_shown_relative_to_the_notebook_folder(tmp_path, monkeypatch):
    from pgd.core.runtime import display_path

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert display_path(tmp_path / "_build" / "runs-full") == "../_build/runs-full"


def test_a_notice_is_printed_once_and_wrapped(capsys):
    from pgd.core.runtime import notice

    shown = notice("Stand-in data", "word " * 60, key="test notice")
    assert shown is not None and shown.startswith("NOTE: Stand-in data. word")
    assert max(len(line) for line in shown.splitlines()) <= 84
    assert notice("Stand-in data", "said again", key="test notice") is None
    assert capsys.readouterr().out == shown + "\n"


def test_code_fingerprint_ignores_the_book_layer_and_nothing_else(tmp_path, monkeypatch):
    import shutil

    import pgd
    from pgd.core import runtime

    copy = tmp_path / "pgd"
    shutil.copytree(Path(pgd.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))

    def fingerprint() -> str:
        runtime.code_fingerprint.cache_clear()
        monkeypatch.setattr(runtime, "__file__", str(copy / "core" / "runtime.py"))
        try:
            return runtime.code_fingerprint()
        finally:
            monkeypatch.undo()
            runtime.code_fingerprint.cache_clear()

    original = fingerprint()
    assert original == runtime.code_fingerprint()
    with (copy / "book" / "plots.py").open("a") as file:
        file.write("\n# a figure changed\n")
    assert fingerprint() == original
    with (copy / "training" / "loop.py").open("a") as file:
        file.write("\n# the training loop changed\n")
    assert fingerprint() != original


def test_groups_are_named_in_the_words_of_the_data():
    from types import SimpleNamespace

    from pgd.book.notebook import name_groups

    splits = SimpleNamespace(
        class_names=["not Blond_Hair", "Blond_Hair"], bias_names=["Male", "not Male"]
    )
    table = pd.DataFrame({"label": [0, 1, 1], "bias": [0, 0, 1], "accuracy": [0.9, 0.5, 1.0]})
    named = name_groups(table, splits)
    assert named["group"].tolist() == [
        "not Blond_Hair / Male",
        "Blond_Hair / Male",
        "Blond_Hair / not Male",
    ]
    assert named["accuracy"].tolist() == [0.9, 0.5, 1.0]  # the table itself is kept


def test_missing_data_is_reported_wrapped_with_the_machine_s_folders_shortened(
    tmp_path, monkeypatch, capsys
):
    from pgd.book.notebook import report_missing_data
    from pgd.core import runtime
    from pgd.datasets.base import DataUnavailableError

    # a reader's machine: the data under the home folder, the notebook outside any project
    monkeypatch.setattr(runtime, "_project_root", lambda start: None)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / ".cache" / "pgd" / "celeba"
    error = DataUnavailableError(
        f"CelebA is not in {folder} (looked for list_attr_celeba.txt). "
        + "Download it from the mirror with prepare_celeba(). " * 5
    )
    text = report_missing_data("CelebA", error, "the stand-in of drawn faces")
    assert capsys.readouterr().out == text + "\n"
    assert text.startswith("CelebA is not available here, so this run uses the stand-in")
    assert "~/.cache/pgd/celeba" in text and str(tmp_path) not in text
    assert max(len(line) for line in text.splitlines()) <= 84
    assert "prepare_celeba()" in text.splitlines()[-1]  # nothing cut off


class _ReadsColour(torch.nn.Module):
    """Answers the class whose palette colour is nearest the digit's stroke colour."""

    def forward(self, images):
        from pgd.datasets.cmnist import PALETTE

        stroke = images.amax(dim=(2, 3))  # (B, 3): the brightest value per channel
        return -torch.cdist(stroke, PALETTE.to(stroke)).pow(2)


class _ReadsShape(torch.nn.Module):
    """Answers a fixed class per digit shape, whatever its colour (here: the true label)."""

    def __init__(self, answers):
        super().__init__()
        self.answers = answers

    def forward(self, images):
        # every digit comes in 10 colours in a row; the k-th block of 10 is digit k of the batch
        labels = self.answers[: len(images) // 10].repeat_interleave(10)
        return torch.nn.functional.one_hot(labels, 10).float()


def test_colour_sway_counts_the_colours_whose_class_the_model_answers(cmnist):
    from pgd.book.probes import colour_sway, most_swayed_digit

    test = cmnist.test.head(30)
    assert torch.equal(colour_sway(_ReadsColour(), test, batch_digits=7), torch.full((30,), 10))
    shape = colour_sway(_ReadsShape(test.labels), test, batch_digits=30)
    assert torch.equal(shape, torch.ones(30, dtype=torch.long))  # only in its own colour
    assert most_swayed_digit(_ReadsColour(), test) == (0, 10)


def test_conflicting_share_plot_reaches_past_the_measured_ratio_on_a_log_axis():
    from pgd.book.theory import conflicting_share

    ax = plots.plot_conflicting_share((0.005, 0.01), conflicting_share, (1398.0, 0.93, "measured"))
    assert ax.get_xscale() == "log" and ax.get_xlim()[1] >= 13_980
    assert len(ax.lines) == 3 and len(ax.collections) == 1  # two curves, the 0.5 line, the point
    plt.close(ax.figure)


def test_lff_final_weights_are_the_objective_s_own_from_a_saved_checkpoint(tmp_path):
    from pgd.book.probes import lff_final_weights, weights_by_group
    from pgd.methods.lff import LfFObjective

    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    objective = LfFObjective(6)
    averages = objective.difficulty
    averages.loss_b = torch.rand(6, generator=gen)
    averages.loss_d = torch.rand(6, generator=gen)
    averages.labels = labels.clone()
    torch.save({"objective": objective.state_dict()}, tmp_path / "lff.pt")
    weights = lff_final_weights(tmp_path / "lff.pt", labels)
    # the plain computation: each average divided by its class maximum, then l_b / (l_b + l_d)
    b = averages.loss_b / torch.where(
        labels == 0, averages.loss_b[:3].max(), averages.loss_b[3:].max()
    )
    d = averages.loss_d / torch.where(
        labels == 0, averages.loss_d[:3].max(), averages.loss_d[3:].max()
    )
    assert torch.allclose(weights, b / (b + d + 1e-8))
    table = weights_by_group(weights, labels, torch.tensor([0, 0, 1, 1, 1, 0]))
    assert table["samples"].sum() == 6 and abs(table["share of weight (%)"].sum() - 100) < 1e-4
    row = table[(table["label"] == 0) & (table["bias"] == 1)].iloc[0]
    assert row["samples"] == 1 and abs(row["mean weight"] - float(weights[2])) < 1e-7


def test_settings_plot_has_a_panel_per_schedule_and_a_column_per_protocol_and_rule():
    rows = [
        {
            "ratio": 0.01,
            "method": m,
            "schedule": sch,
            "protocol": p,
            "selection": rule,
            "seed": s,
            "accuracy": 40.0 + 10 * (m == "pgd") + s,
        }
        for m in ("vanilla", "pgd")
        for sch in ("full", "quick")
        for p in ("shared", "own")
        for rule in ("valid_loss", "last")
        for s in range(3)
    ]
    fig = plots.plot_settings(pd.DataFrame(rows), ratio=0.01, methods=["vanilla", "pgd"])
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["full schedule", "quick schedule"]
    labels = [t.get_text() for t in axes[0].get_xticklabels()]
    assert labels == ["shared\nval. loss", "shared\nlast", "own\nval. loss", "own\nlast"]
    # one legend for the figure, naming every method once
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "Vanilla (ERM)",
        "PGD (last layer)",
    ]
    plt.close(fig)


def test_say_wraps_every_line_of_a_long_message_and_keeps_its_words(capsys):
    from pgd.book.notebook import say
    from pgd.core.runtime import NOTICE_WIDTH

    long = "This chapter ran in 0.2 minutes; " + "models read back from checkpoints " * 8
    assert say(long.strip(), "\nsecond line: ", 42) is None  # no Out[] value under a cell
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= NOTICE_WIDTH
    assert len(printed.splitlines()) > 3
    assert " ".join(printed.split()) == " ".join(f"{long} second line: 42".split())
    assert printed.splitlines()[-1] == "second line: 42"


def test_a_stage_bar_in_a_terminal_leaves_only_its_summary_line(capsys):
    from pgd.core.runtime import StageBar

    bar = StageBar(range(3), show=True, desc="vanilla", unit="epoch")
    assert list(bar) == [0, 1, 2]
    bar.finish("vanilla: 3 epochs")
    assert capsys.readouterr().out == "vanilla: 3 epochs\n"
    quiet = StageBar(range(2), show=False)
    list(quiet)
    quiet.finish(None)
    assert capsys.readouterr().out == ""


def test_a_stage_bar_in_a_notebook_is_replaced_by_its_summary_line(monkeypatch):
    """A saved notebook keeps the line, not the widget's first state as text."""
    import IPython.display

    from pgd.core import runtime

    updates = []

    class Handle:
        def update(self, data, raw=False):
            updates.append((data, raw))

    shown = []
    monkeypatch.setattr(runtime, "_in_notebook", lambda: True)
    monkeypatch.setattr(
        IPython.display, "display", lambda obj, display_id=False: shown.append(obj) or Handle()
    )
    bar = runtime.StageBar(range(2), show=True, desc="biased")
    list(bar)
    bar.finish("biased: 2 epochs")
    assert len(shown) == 1  # the widget, shown once through a handle
    assert updates == [({"text/plain": "biased: 2 epochs"}, True)]


def test_progress_bars_follow_the_argument_then_pgd_progress_then_tqdm_disable(monkeypatch):
    from pgd.core.runtime import progress_enabled

    monkeypatch.delenv("PGD_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_enabled() and not progress_enabled(False)
    monkeypatch.setenv("PGD_PROGRESS", "0")
    assert not progress_enabled() and progress_enabled(True)
    monkeypatch.setenv("PGD_PROGRESS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not progress_enabled() and progress_enabled(True)
