"""pgd: Per-sample Gradient-based Debiasing (Ahn, Kim & Yun, ICLR 2023), the PGD book's package.

``import pgd`` first makes ``import torchvision`` work on machines that pair a CPU-only torch
with a CUDA torchvision wheel (see :mod:`pgd.core.compat`); elsewhere it changes nothing.
"""

from .core import compat

compat.import_torchvision()

__version__ = "0.1.0"
