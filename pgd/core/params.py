"""Settings that a dataset or a method declares for itself.

A dataset (:mod:`pgd.datasets.registry`) or a method (:mod:`pgd.methods.registry`) lists its own
settings as :class:`Param` objects: name, default, help, how to read one from the command line
and how to check it. :class:`pgd.experiments.config.ExperimentConfig` validates a run's settings
with them, and ``python -m pgd run`` builds its options from them, so a new method's settings
appear in ``python -m pgd run -h`` without editing the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """One declared setting.

    Attributes:
        name: the configuration key (``ExperimentConfig(name=...)``); on the command line
            ``--name-with-dashes``.
        default: the value when the setting is left out.
        help: one line for ``-h``.
        parse: turns the command-line text into a value (ignored for ``flag`` settings).
        choices: the allowed values, if they are a fixed list.
        check: returns the normalised value or raises ValueError saying what is wrong.
        tag: the short name of a method's hyper-parameter in run names and result tables (e.g.
            ``lambda`` for JTT's up-weighting); None where the owner names it otherwise.
        flag: a boolean switched on by ``--name`` alone.
        identity_at_default: False for a setting added after runs were made: at its default it is
            left out of run identities, so that those runs keep their checkpoints.
    """

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], Any] | None = None
    tag: str | None = None
    flag: bool = False
    identity_at_default: bool = True

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def validate(self, value: Any) -> Any:
        """The normalised ``value``, or ValueError naming the setting and the allowed values."""
        if self.choices is not None:
            key = str(value).strip().lower()
            if key not in self.choices:
                raise ValueError(
                    f"unknown {self.name.replace('_', ' ')} {value!r}; choose one of "
                    f"{', '.join(map(str, self.choices))}"
                )
            value = key
        return self.check(value) if self.check is not None else value


def add_param_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    owners: Mapping[str, Iterable[Param]],
) -> None:
    """Add one command-line option per setting of ``owners`` (owner name -> its settings); a
    setting shared by several owners (the same name) is added once and says whose it is. Every
    option defaults to None, so that a setting left out keeps its declared default."""
    seen: dict[str, tuple[Param, list[str]]] = {}
    for owner, params in owners.items():
        for param in params:
            if param.name in seen:
                first = seen[param.name][0]
                if (first.default, first.flag, first.choices) != (
                    param.default,
                    param.flag,
                    param.choices,
                ):
                    raise ValueError(f"{owner} declares {param.name} unlike its other owners")
                seen[param.name][1].append(owner)
            else:
                seen[param.name] = (param, [owner])
    for param, names in seen.values():
        default = "" if param.flag or param.default is None else f"; default {param.default}"
        text = f"{'/'.join(names)}: {param.help}{default}"
        if param.flag:
            parser.add_argument(param.option, action="store_true", default=None, help=text)
        else:
            parser.add_argument(
                param.option,
                type=param.parse,
                choices=param.choices,
                default=None,
                metavar=None if param.choices else param.name.split("_")[-1].upper(),
                help=text,
            )


def lookup(registry: Mapping[str, Any], name: str, what: str) -> Any:
    """``registry[name]`` (case and surrounding spaces ignored), or ValueError naming ``what``
    and every registered name."""
    key = str(name).strip().lower()
    if key not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[key]


def register(registry: dict[str, Any], spec: Any, what: str) -> Any:
    """Add ``spec`` (anything with a ``name``) to ``registry`` under its name, the counterpart
    of :func:`lookup`; registering the same object again changes nothing.

    Raises:
        ValueError: the name is not lower case without surrounding spaces, or another ``what``
            has it.
    """
    key = spec.name.strip().lower()
    if key != spec.name:
        raise ValueError(f"{what} name {spec.name!r}: write it in lower case without spaces")
    if key in registry and registry[key] is not spec:
        raise ValueError(f"a {what} named {key!r} is already registered; choose another name")
    registry[key] = spec
    return spec
