"""The registered methods: name -> :class:`~pgd.methods.base.MethodSpec`.

Every method module defines one ``SPEC`` (its runner, settings, and whether it reads bias
labels); adding a method is writing such a module and listing it here.

========== ================================================================ ===================
method     what it changes                                                  bias labels
========== ================================================================ ===================
vanilla    nothing (ERM, uniform batches)                                   no
pgd        batches drawn in proportion to the biased model's per-sample     no
           gradient norms (Ahn et al. 2023)
lff        a GCE model learns the bias; a second model's loss is weighted   no
           by relative difficulty (Nam et al. 2020)
dfa        an intrinsic and a GCE bias branch; relative-difficulty weights; no
           bias features swapped between samples (Lee et al. 2021)
rebias     features made independent (HSIC) of a network that can see only no (told the
           the bias's kind (Bahng et al. 2020)                              bias's kind)
jtt        ERM for T epochs, then its error set drawn 1 + lambda times as   no
           often (Liu et al. 2021)
upsample   batches drawn so that every (label, bias) group is equally       **yes (oracle)**
           likely
groupdro   the worst groups' loss up-weighted online, on group-balanced     **yes (oracle)**
           batches (Sagawa et al. 2020)
========== ================================================================ ===================

Methods that read bias labels of the training set are *oracles*: they show what knowing the bias
is worth, and are not competitors of PGD, which never sees those labels. Every method uses the
same network, optimiser, learning-rate schedule, epochs and model selection (lowest validation
loss) as PGD's debiased model.
"""

from __future__ import annotations

from ..core.params import lookup, register
from . import dfa, groupdro, jtt, lff, pgd, rebias, upsample, vanilla
from .base import MethodSpec

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        vanilla.SPEC,
        pgd.SPEC,
        lff.SPEC,
        dfa.SPEC,
        rebias.SPEC,
        jtt.SPEC,
        upsample.SPEC,
        groupdro.SPEC,
    )
}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (a plugin's import calls it; see :mod:`pgd.core.plugins`):
    ``--method NAME``, its settings on the command line and in ``ExperimentConfig``, its grid
    entries in ``compare``, ``list``. Registering the same spec again changes nothing.

    Raises:
        ValueError: another method has this name.
    """
    return register(METHODS, spec, "method")


def __getattr__(name: str):
    """``ORACLES``: the registered methods that need the bias labels of the training set."""
    if name == "ORACLES":
        return tuple(n for n, spec in METHODS.items() if spec.reads_bias_labels)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        ValueError: no such method (the message lists the registered ones).
    """
    return lookup(METHODS, name, "method")
