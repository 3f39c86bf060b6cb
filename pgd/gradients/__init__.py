"""Layer 3, gradients: exact per-sample gradient norms. :mod:`~.grad_norms` computes them over
all (or chosen) parameters of a network in one forward and one backward pass;
:mod:`~.scores` holds the last layer's closed form, PGD's scores over a dataset and the
``torch.func`` / per-sample-loop references. Imports the layers below: core, datasets, models."""
