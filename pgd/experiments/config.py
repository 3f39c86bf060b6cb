"""What defines one run: :class:`ExperimentConfig`.

The configuration keeps what every run has (dataset, method, ratio, model, profile, epochs, seeds,
device); a dataset's own settings (Colored MNIST's digit source, CelebA's attributes, the
stand-ins' image size...) and a method's own hyper-parameters (JTT's T and lambda, GroupDRO's
step, LfF's q and EMA, PGD's score) are declared by that dataset or method in its registry entry
and validated there. They are passed by name, like every other field::

    ExperimentConfig(dataset="celeba", stand_in=True, method="jtt", jtt_upweight=10)

and read back the same way (``config.jtt_upweight``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..core.params import lookup
from ..core.profiles import Profile, get_profile
from ..datasets.base import DatasetSpec, check_ratio
from ..datasets.registry import DATASETS, get_dataset
from ..methods.base import MethodSpec
from ..methods.registry import METHODS, get_method
from ..models import MODELS

#: The fields every configuration has; any other keyword is a dataset's or a method's setting.
COMMON_FIELDS = (
    "dataset",
    "method",
    "ratio",
    "model",
    "profile",
    "epochs",
    "seed",
    "data_seed",
    "device",
    "pretrained",
)


def _owners(name: str) -> list[str]:
    datasets = [d.name for d in DATASETS.values() if any(o.name == name for o in d.options)]
    methods = [m.name for m in METHODS.values() if any(p.name == name for p in m.params)]
    return datasets + methods


def _route(
    settings: Mapping[str, Any], dataset: DatasetSpec, method: MethodSpec
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``settings`` into the dataset's and the method's, or say whose a setting is."""
    options = {o.name for o in dataset.options}
    params = {p.name for p in method.params}
    mine: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for name, value in settings.items():
        if name in options:
            mine[0][name] = value
        elif name in params:
            mine[1][name] = value
        else:
            owners = _owners(name)
            if owners:
                raise ValueError(
                    f"{name} is a setting of {', '.join(owners)}, not of this run (dataset "
                    f"{dataset.name}, method {method.name})"
                )
            every = sorted({s for d in DATASETS.values() for s in (o.name for o in d.options)})
            every += sorted({p.name for m in METHODS.values() for p in m.params})
            raise ValueError(
                f"unknown setting {name!r}; the common ones are {', '.join(COMMON_FIELDS)}, and "
                f"datasets and methods declare {', '.join(every)}"
            )
    return mine


def _checked(
    spec: Any, given: dict[str, Any], declared: tuple, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    values = {
        p.name: p.validate(given[p.name]) if p.name in given else defaults[p.name] for p in declared
    }
    check = getattr(spec, "check_params", None)
    return check(values) if check is not None else values


@dataclass(frozen=True, init=False)
class ExperimentConfig:
    """Everything that defines one run.

    Attributes:
        dataset: a registered dataset (``python -m pgd list``): ``cmnist`` (Colored MNIST),
            ``celeba`` or ``bffhq``.
        method: a registered method: ``vanilla`` (ERM), ``pgd``, ``lff``, ``jtt``, and the
            oracles (they read the training set's bias labels) ``upsample`` and ``groupdro``.
        ratio: share of bias-conflicting training samples, in (0, 1), where the dataset lets
            one choose it (default: the dataset's: Colored MNIST 0.01, BFFHQ 0.005); None for
            CelebA, whose data sets it.
        model: ``mlp`` (LfF/DFA's MLP), ``cnn`` (the official code's small CNN) or ``resnet18``;
            default: the dataset's (``cnn`` on Colored MNIST, ``resnet18`` on CelebA and BFFHQ).
        profile: ``smoke``, ``quick`` or ``full`` (default: ``$PGD_PROFILE``, else quick), or a
            :class:`~pgd.core.profiles.Profile`.
        epochs: override the profile's epochs per training stage (None: the profile's).
        seed: seeds weight initialisation, batch order and dropout.
        data_seed: seeds the dataset's randomness (Colored MNIST's colouring; default: ``seed``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        pretrained: ResNet-18 starts from ImageNet weights (downloaded) instead of random ones.
        settings: the dataset's and the method's settings that differ from their defaults,
            as sorted ``(name, value)`` pairs; read every setting with :attr:`options`,
            :attr:`params` or as an attribute.
    """

    dataset: str = "cmnist"
    method: str = "pgd"
    ratio: float | None = None
    model: str | None = None
    profile: str | Profile | None = None
    epochs: int | None = None
    seed: int = 0
    data_seed: int | None = None
    device: str = "auto"
    pretrained: bool = False
    settings: tuple[tuple[str, Any], ...] = field(default=())

    def __init__(
        self,
        dataset: str = "cmnist",
        method: str = "pgd",
        ratio: float | None = None,
        model: str | None = None,
        profile: str | Profile | None = None,
        epochs: int | None = None,
        seed: int = 0,
        data_seed: int | None = None,
        device: str = "auto",
        pretrained: bool = False,
        settings: tuple[tuple[str, Any], ...] = (),
        **more: Any,
    ) -> None:
        fix = object.__setattr__
        data_spec, method_spec = get_dataset(dataset), get_method(method)
        fix(self, "dataset", data_spec.name)
        fix(self, "method", method_spec.name)
        # ``settings`` come from another configuration (dataclasses.replace): those that the
        # new dataset or method does not declare are left behind with the old one.
        mine = _settings_of(data_spec, method_spec)
        carried = {k: v for k, v in dict(settings).items() if k not in more and k in mine}
        given_options, given_params = _route({**carried, **more}, data_spec, method_spec)
        option_defaults = {o.name: o.default for o in data_spec.options}
        param_defaults = method_spec.defaults(data_spec.name)  # its paper's on this dataset
        options = _checked(data_spec, given_options, data_spec.options, option_defaults)
        params = _checked(method_spec, given_params, method_spec.params, param_defaults)
        defaults = option_defaults | param_defaults
        chosen = {**options, **params}
        fix(
            self,
            "settings",
            tuple(sorted((k, v) for k, v in chosen.items() if v != defaults[k])),
        )
        model = model if model is not None else data_spec.default_model
        lookup(MODELS, model, "model")
        key = str(model).strip().lower()
        fix(self, "model", key)
        fix(self, "profile", profile if isinstance(profile, Profile) else get_profile(profile).name)
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        fix(self, "epochs", epochs)
        if data_spec.default_ratio is None:
            if ratio is not None:
                raise ValueError(
                    f"{data_spec.label} has no bias-conflicting ratio to choose: its bias comes "
                    "with the data. Leave the ratio out (command line: no --ratio)."
                )
            fix(self, "ratio", None)
        else:
            fix(self, "ratio", check_ratio(ratio if ratio is not None else data_spec.default_ratio))
        size = dict(self.settings).get("image_size")
        if key == "cnn" and size is not None and size < 28:
            raise ValueError(f"the small CNN needs images of at least 28 pixels, got {size}")
        if pretrained and key != "resnet18":
            raise ValueError(f"pretrained weights exist for resnet18 only, not for {key}")
        fix(self, "pretrained", bool(pretrained))
        fix(self, "seed", seed)
        fix(self, "data_seed", seed if data_seed is None else data_seed)
        fix(self, "device", device)

    # -- settings -----------------------------------------------------------------------------

    @property
    def dataset_spec(self) -> DatasetSpec:
        return get_dataset(self.dataset)

    @property
    def method_spec(self) -> MethodSpec:
        return get_method(self.method)

    @property
    def options(self) -> dict[str, Any]:
        """Every setting of the dataset (declared defaults, with this run's choices)."""
        chosen = dict(self.settings)
        return {o.name: chosen.get(o.name, o.default) for o in self.dataset_spec.options}

    @property
    def params(self) -> dict[str, Any]:
        """Every setting of the method (declared defaults, with this run's choices)."""
        chosen, defaults = dict(self.settings), self.method_spec.defaults(self.dataset)
        return {p.name: chosen.get(p.name, defaults[p.name]) for p in self.method_spec.params}

    def __getattr__(self, name: str) -> Any:
        # Only for settings; a field not set yet (an object being unpickled) is not looked up.
        if name.startswith("_") or name in COMMON_FIELDS or name == "settings":
            raise AttributeError(name)
        for values in (self.options, self.params):
            if name in values:
                return values[name]
        owners = _owners(name)
        if owners:
            raise AttributeError(
                f"{name} is a setting of {', '.join(owners)}; this run's dataset is "
                f"{self.dataset} and its method {self.method}"
            )
        raise AttributeError(f"ExperimentConfig has no field or setting {name!r}")

    # -- derived ------------------------------------------------------------------------------

    @property
    def profile_spec(self) -> Profile:
        """The profile, with its epochs for this dataset, or ``epochs`` if given."""
        profile = get_profile(self.profile)
        own = self.dataset_spec.profile_epochs.get(profile.name)
        return replace(profile, epochs=self.epochs or profile.epochs_for(own=own))

    def stage_epochs(self, train_size: int | None = None) -> int:
        """Epochs per training stage: ``epochs`` if given, else the profile's for this dataset
        and ``train_size`` training samples (a profile bounded by work trains fewer epochs on
        more data; ``None``: the most the profile trains)."""
        if self.epochs is not None:
            return self.epochs
        profile = get_profile(self.profile)
        return profile.epochs_for(train_size, self.dataset_spec.profile_epochs.get(profile.name))

    @property
    def is_oracle(self) -> bool:
        """The method reads the training set's bias labels (upsampling, GroupDRO)."""
        return self.method_spec.reads_bias_labels

    def method_hparams(self) -> dict[str, Any]:
        """The method's tagged hyper-parameters (empty for vanilla and PGD)."""
        return self.method_spec.hparams(self.params)

    def name(self, source: str | None = None) -> str:
        """A folder name for this run (``source``: the data source actually used, e.g. the
        digits ``auto`` resolved to)."""
        parts = self.dataset_spec.name_parts(self.ratio, self.options, source)
        if self.pretrained:
            parts.append("imagenet")
        parts += [self.method, self.model, self.profile_spec.name, f"seed{self.seed}"]
        if self.epochs is not None:
            parts.append(f"epochs{self.epochs}")
        if self.data_seed != self.seed:
            parts.append(f"data{self.data_seed}")
        parts += self.method_spec.run_name_parts(self.params)
        return "-".join(str(p) for p in parts)

    def record(self) -> dict[str, Any]:
        """Every field and every registered setting as one flat dict (settings of other
        datasets and methods at their defaults): the configuration in result files, and part
        of a checkpoint's identity."""
        out: dict[str, Any] = {}
        for name in COMMON_FIELDS:
            value = getattr(self, name)
            out[name] = asdict(value) if isinstance(value, Profile) else value
        for spec in DATASETS.values():
            out.update({o.name: o.default for o in spec.options})
        for spec in METHODS.values():
            out.update({p.name: p.default for p in spec.params})
        out.update(self.options)
        out.update(self.params)
        return out

    def identity(self) -> dict[str, Any]:
        """What this run is, and nothing else: the common fields (the profile by its name and
        the data it keeps, since the epochs it trains are part of each stage's own settings), this
        dataset's options and this method's settings, each at its value or default (a setting
        declared with ``identity_at_default=False`` only when it is not at its default).
        Registering another dataset or method, or changing another profile, leaves it
        unchanged."""
        out: dict[str, Any] = {name: getattr(self, name) for name in COMMON_FIELDS}
        profile = get_profile(self.profile)
        out["profile"] = {
            "name": profile.name,
            "max_train": profile.max_train,
            "max_eval": profile.max_eval,
        }
        for declared, values in (
            (self.dataset_spec.options, self.options),
            (self.method_spec.params, self.params),
        ):
            out.update(
                {
                    p.name: values[p.name]
                    for p in declared
                    if p.identity_at_default or values[p.name] != p.default
                }
            )
        return out


def _settings_of(dataset: DatasetSpec, method: MethodSpec) -> set[str]:
    return {o.name for o in dataset.options} | {p.name for p in method.params}
