"""Layer 4, training: one training loop for every model of the book (:mod:`~.loop`: objectives,
validation-based selection, atomic checkpoints and exact resume, throughput), each network's
schedule (:mod:`~.schedules`) and the accuracy metrics (:mod:`~.metrics`). Imports the layers
below: core, datasets, models, gradients."""
