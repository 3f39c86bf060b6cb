"""Layer 4, training: one training loop for every model of the book (:mod:`~.loop`) and what it
uses: the losses (:mod:`~.objectives`), validation-based model selection (:mod:`~.selection`),
atomic checkpoints and exact resume (:mod:`~.checkpoints`); each network's schedule
(:mod:`~.schedules`), the accuracy metrics (:mod:`~.metrics`) and training speed
(:mod:`~.throughput`). Imports the layers below: core, datasets, models, gradients."""
