"""Layer 5, methods: PGD (:mod:`~.pgd`: its three steps; :mod:`~.sampling`: importance-batch
sampling), the baselines one per module (:mod:`~.vanilla`, :mod:`~.lff`, :mod:`~.jtt`, and the
oracles :mod:`~.upsample` and :mod:`~.groupdro`), what a method is (:mod:`~.base`) and the
registry (:mod:`~.registry`). Imports the layers below: core, datasets, models, gradients,
training."""
