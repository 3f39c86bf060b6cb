from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from pgd.core import storage
from pgd.core.storage import CorruptFileError, atomic_save, safe_load
from pgd.datasets.cmnist import ColoredMNIST
from pgd.methods.sampling import importance_sampler
from pgd.models import build_model
from pgd.training.checkpoints import load_checkpoint, training_seconds
from pgd.training.loop import TrainConfig, train
from pgd.training.objectives import GeneralizedCELoss, Objective

CNN_FAST = TrainConfig(epochs=3, batch_size=64, lr=0.02, lr_step=2)


def _fresh(name: str = "cnn", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name)


def test_gce_gradient_is_q_times_the_textbook_gce_gradient():
    q = 0.7
    logits = torch.randn(5, 10, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 9, 1])
    GeneralizedCELoss(q)(logits, labels).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    p_y = F.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)
    ((1 - p_y.pow(q)) / q).sum().backward()
    torch.testing.assert_close(ours, q * logits.grad)


def test_gce_rejects_q_outside_zero_one():
    with pytest.raises(ValueError, match="q must lie"):
        GeneralizedCELoss(0)


@pytest.mark.parametrize(
    ("field", "value"), [("optimizer", "rmsprop"), ("loss", "mse"), ("selection", "test")]
)
def test_unknown_training_options_are_refused(field, value):
    with pytest.raises(ValueError, match=f"unknown {field}"):
        TrainConfig(epochs=1, **{field: value})


def test_nan_loss_stops_with_the_epoch_and_batch(cmnist):
    bad = cmnist.train.head(200)
    bad = ColoredMNIST(
        bad.digits, bad.labels, bad.bias_labels, torch.full_like(bad.noise, torch.nan), "train"
    )
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch 1"):
        train(_fresh("mlp"), bad, cmnist.valid.head(50), TrainConfig(epochs=1), progress=False)


def test_selection_keeps_the_epoch_of_lowest_validation_loss(cmnist):
    result = train(
        _fresh(), cmnist.train.head(400), cmnist.valid.head(100), CNN_FAST, progress=False
    )
    losses = result.history["valid_loss"].tolist()
    assert result.best_epoch == max(i for i, v in enumerate(losses) if v == min(losses))
    last = train(
        _fresh(),
        cmnist.train.head(400),
        cmnist.valid.head(100),
        TrainConfig(**{**CNN_FAST.__dict__, "selection": "last"}),
        progress=False,
    )
    assert last.best_epoch == CNN_FAST.epochs - 1


def test_every_selection_rule_keeps_the_weights_of_the_epoch_it_chose(cmnist, tmp_path):
    from pgd.training.metrics import group_mean_accuracy, predict

    train_set, valid_set = cmnist.train.head(400), cmnist.valid.head(100)
    config = TrainConfig(**{**CNN_FAST.__dict__, "epochs": 4})

    result = train(
        _fresh(), train_set, valid_set, config, checkpoint=tmp_path / "c.pt", progress=False
    )
    history = result.history
    expected = {
        "last": 3,
        "valid_loss": max(
            i for i, v in enumerate(history["valid_loss"]) if v == history["valid_loss"].min()
        ),
        "valid_accuracy": max(
            i
            for i, v in enumerate(history["valid_accuracy"])
            if v == history["valid_accuracy"].max()
        ),
        "valid_group_accuracy": max(
            i
            for i, v in enumerate(history["valid_group_accuracy"])
            if v == history["valid_group_accuracy"].max()
        ),
    }
    assert result.selected == expected
    assert _weights_equal(result.selected_states["valid_loss"], result.model.state_dict())
    final = load_checkpoint(tmp_path / "c.pt")
    assert _weights_equal(result.selected_states["last"], final["model"])
    # The recorded group accuracy is the one the kept weights give on the validation split.
    rule = "valid_group_accuracy"
    model = _fresh()
    model.load_state_dict(result.selected_states[rule])
    p = predict(model, valid_set)
    assert group_mean_accuracy(p.correct, p.labels, p.bias_labels) == pytest.approx(
        history[rule].iloc[result.selected[rule]]
    )


def test_group_mean_accuracy_averages_the_groups_present():
    from pgd.training.metrics import group_mean_accuracy

    correct = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    bias = torch.tensor([0, 0, 1, 1, 1, 0])
    # groups (0,0): 2/2, (0,1): 0/1, (1,1): 1/2, (1,0): 0/1
    assert group_mean_accuracy(correct, labels, bias) == pytest.approx((1 + 0 + 0.5 + 0) / 4)


def test_group_mean_accuracy_is_the_group_tables_mean_to_the_bit():
    """The loop's selection rule and the results table read the same number."""
    from pgd.training.metrics import Predictions, group_accuracy_table, group_mean_accuracy

    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(20, 500, (1,), generator=generator))
        labels = torch.randint(0, 10, (n,), generator=generator)
        bias = torch.randint(0, 10, (n,), generator=generator)
        predicted = torch.where(torch.rand(n, generator=generator) < 0.7, labels, bias)
        table = group_accuracy_table(Predictions(predicted, labels, bias, torch.zeros(n)))
        correct = predicted == labels
        assert group_mean_accuracy(correct, labels, bias) == float(table["accuracy"].mean())


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _KilledAfter(Objective):
    """``CNN_FAST``'s default objective, killed (KeyboardInterrupt) at batch ``batches + 1``."""

    def __init__(self, batches: int) -> None:
        super().__init__(CNN_FAST.loss, CNN_FAST.gce_q)
        self.left = batches

    def __call__(self, *args):
        if self.left == 0:
            raise KeyboardInterrupt("killed (test)")
        self.left -= 1
        return super().__call__(*args)


@pytest.mark.parametrize("weighted", [False, True])
def test_killed_run_resumes_to_identical_weights(cmnist, tmp_path, weighted):
    train_set, valid_set = cmnist.train.head(320), cmnist.valid.head(100)

    def sampler():
        if not weighted:
            return None
        scores = torch.linspace(0.1, 1.0, len(train_set))
        return importance_sampler(scores, generator=torch.Generator().manual_seed(0))

    whole = train(
        _fresh(),
        train_set,
        valid_set,
        CNN_FAST,
        sampler=sampler(),
        checkpoint=tmp_path / "whole.pt",
        progress=False,
    )
    # 5 batches per epoch: stop in the middle of the second epoch, then resume.
    with pytest.raises(KeyboardInterrupt):
        train(
            _fresh(),
            train_set,
            valid_set,
            CNN_FAST,
            sampler=sampler(),
            checkpoint=tmp_path / "cut.pt",
            progress=False,
            objective=_KilledAfter(7),
        )
    assert load_checkpoint(tmp_path / "cut.pt")["epoch"] == 0
    resumed = train(
        _fresh(seed=99),
        train_set,
        valid_set,
        CNN_FAST,
        sampler=sampler(),
        checkpoint=tmp_path / "cut.pt",
        resume=True,
        progress=False,
    )
    assert resumed.resumed_from == 1
    final_whole = load_checkpoint(tmp_path / "whole.pt")["model"]
    final_resumed = load_checkpoint(tmp_path / "cut.pt")["model"]
    assert _weights_equal(final_whole, final_resumed)
    assert _weights_equal(whole.model.state_dict(), resumed.model.state_dict())
    assert whole.history.drop(columns="seconds").equals(resumed.history.drop(columns="seconds"))


def test_finished_checkpoint_returns_without_training(cmnist, tmp_path):
    train_set, valid_set = cmnist.train.head(128), cmnist.valid.head(50)
    config = TrainConfig(epochs=1, batch_size=64)
    first = train(
        _fresh(), train_set, valid_set, config, checkpoint=tmp_path / "c.pt", progress=False
    )

    class Exploding(ColoredMNIST):
        def __getitem__(self, index):
            raise AssertionError("trained again")

    exploding = Exploding(
        train_set.digits, train_set.labels, train_set.bias_labels, train_set.noise, "train"
    )
    again = train(
        _fresh(seed=5),
        exploding,
        valid_set,
        config,
        checkpoint=tmp_path / "c.pt",
        resume=True,
        progress=False,
    )
    assert _weights_equal(first.model.state_dict(), again.model.state_dict())


def test_checkpoint_of_another_configuration_is_not_resumed(cmnist, tmp_path):
    train_set, valid_set = cmnist.train.head(128), cmnist.valid.head(50)
    config = TrainConfig(epochs=1, batch_size=64)
    train(
        _fresh(),
        train_set,
        valid_set,
        config,
        checkpoint=tmp_path / "c.pt",
        fingerprint="A",
        progress=False,
    )
    with pytest.warns(UserWarning, match="another configuration"):
        result = train(
            _fresh(),
            train_set,
            valid_set,
            config,
            checkpoint=tmp_path / "c.pt",
            fingerprint="B",
            resume=True,
            progress=False,
        )
    assert result.resumed_from is None


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def crash(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(storage.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert safe_load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


class Payload:
    """An arbitrary pickled object: weights_only loading must refuse it."""


def test_checkpoints_are_loaded_without_running_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"model": Payload()}, path)
    with pytest.raises(CorruptFileError, match="cannot be read"):
        safe_load(path)


def test_unreadable_checkpoint_on_resume_says_how_to_recover(cmnist, tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="Delete"):
        train(
            _fresh(),
            cmnist.train.head(64),
            cmnist.valid.head(32),
            TrainConfig(epochs=1),
            checkpoint=path,
            resume=True,
            progress=False,
        )


def test_without_bars_a_stage_ends_with_one_summary_line(cmnist, monkeypatch, capsys):
    monkeypatch.setenv("PGD_PROGRESS", "0")
    train(
        _fresh(), cmnist.train.head(128), cmnist.valid.head(50), TrainConfig(epochs=2), desc="demo"
    )
    out = capsys.readouterr()
    assert out.out.startswith("demo: 2 epochs,") and "kept epoch" in out.out
    assert "epoch/s" not in out.err  # no progress bar


def test_a_folder_written_in_stages_replaces_the_old_one_only_when_complete(tmp_path):
    from pgd.core.storage import staged_folder

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(OSError, match="disk full"), staged_folder(folder) as staging:
        (staging / "half.txt").write_text("half")
        raise OSError("disk full")
    assert [p.name for p in folder.iterdir()] == ["old.txt"]  # the old folder, untouched
    with staged_folder(folder) as staging:
        assert list(staging.iterdir()) == []  # the interrupted attempt's files are gone
        (staging / "new.txt").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no staging folder left


def test_a_cached_value_is_computed_once_and_recomputed_when_damaged_or_stale(tmp_path):
    from pgd.core.storage import cached

    path, calls, said = tmp_path / "value.pt", [], []

    def compute():
        calls.append(1)
        return {"version": 2, "w": torch.arange(3)}

    def read(blob):
        if blob["version"] != 2:
            raise CorruptFileError(f"version {blob['version']}")
        return blob["w"]

    assert torch.equal(cached(path, compute, read), torch.arange(3)) and len(calls) == 1
    assert torch.equal(cached(path, compute, read), torch.arange(3)) and len(calls) == 1
    atomic_save({"version": 1, "w": torch.zeros(3)}, path)  # stale: another version
    assert torch.equal(cached(path, compute, read, stale=said.append), torch.arange(3))
    path.write_bytes(b"truncated")  # damaged
    assert torch.equal(cached(path, compute, read, stale=said.append), torch.arange(3))
    atomic_save({"w": torch.zeros(3)}, path)  # another format: no version at all
    cached(path, compute, read, stale=said.append)
    assert len(calls) == 4 and len(said) == 3 and "version 1" in str(said[0])
    assert torch.equal(safe_load(path)["w"], torch.arange(3))  # the recomputed value was saved


def test_a_delayed_decay_starts_counting_its_steps_after_the_delay():
    """DFA steps its scheduler only from its curriculum step on: with a delay of 2 epochs and a
    step of 2, the rate falls at epochs 4 and 6, not 2, 4 and 6."""
    from pgd.training.loop import make_scheduler

    config = TrainConfig(epochs=8, optimizer="sgd", lr=1.0, lr_step=2, lr_gamma=0.5, lr_delay=2)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, rates = make_scheduler(optimizer, config), []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_a_field_added_at_its_default_leaves_the_checkpoint_identity_as_it_was():
    """Checkpoints written before ``lr_delay`` existed stay valid: at its default it is not part
    of the identity; set, it is."""
    from dataclasses import asdict

    plain = TrainConfig(epochs=3)
    before = {k: v for k, v in asdict(plain).items() if k != "lr_delay"}
    assert plain.identity() == before
    assert TrainConfig(epochs=3, lr_delay=1).identity() == {**before, "lr_delay": 1}


def test_a_runs_training_time_is_read_from_every_stages_checkpoint(tmp_path):
    run = tmp_path / "pgd-run"
    run.mkdir()
    for stage, seconds in (("biased", [1.5, 2.5]), ("debiased", [3.0])):
        history = [{"epoch": i, "seconds": s} for i, s in enumerate(seconds)]
        atomic_save({"finished": True, "history": history}, run / f"{stage}.pt")
    assert training_seconds(run) == 7.0
    atomic_save({"finished": False, "history": [{"seconds": 9.0}]}, run / "debiased.pt")
    assert training_seconds(run) is None  # unfinished: no time claimed
    assert training_seconds(tmp_path / "absent") is None
