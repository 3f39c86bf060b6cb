"""Layer 6, experiments: what defines a run (:mod:`~.config`), one run end to end
(:mod:`~.pipeline`), the comparison grid (:mod:`~.compare`) and the command line (:mod:`~.cli`).
Imports every layer below; only the book layer imports it."""
