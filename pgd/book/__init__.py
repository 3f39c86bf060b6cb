"""Layer 7, the book: the chapters' figures (:mod:`~.plots`), notebook helpers
(:mod:`~.notebook`: the setup cell, provenance tables, benchmark results) and chapter 6's
mathematics and simulations (:mod:`~.theory`). It may import every layer; nothing imports it."""
