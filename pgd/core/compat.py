"""Make ``import torchvision`` work with a CPU-only torch and a CUDA torchvision wheel.

torchvision 0.28.0 on PyPI is built against CUDA. Paired with the CPU build of torch 2.13.0 (the
only build this project's machines can install), its compiled operators cannot load, and the
import stops with ``RuntimeError: operator torchvision::nms does not exist`` while registering
fake kernels for ``nms`` and ``qnms``. Declaring those two operator schemas with
:mod:`torch.library` before the import lets it finish; everything this book uses from
torchvision (models, transforms, datasets) works, while ``torchvision.ops.nms`` stays
unavailable.

Where torchvision imports normally (Colab, any CUDA machine, a matching CPU wheel) nothing is
changed: the schemas are only declared after a plain import has failed with that exact error.
"""

from __future__ import annotations

import sys

import torch

_MISSING_OPERATORS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: the schemas live as long as it does
patched = False  # True when this module had to declare the schemas


def _forget_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision():
    """Import torchvision, declaring its missing operator schemas first if (and only if) needed.

    Returns:
        The imported ``torchvision`` module.
    """
    global _library, patched
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error) or patched:
            raise
        _forget_partial_import()
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_OPERATORS.values():
            _library.define(schema)
        patched = True
        import torchvision
    return torchvision
