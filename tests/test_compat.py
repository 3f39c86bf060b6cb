"""`import pgd` makes torchvision importable on CPU-only torch, and changes nothing elsewhere."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import pgd
from pgd.core import compat as _compat
import torch, torchvision
from torchvision.models import resnet18
from torchvision.transforms import v2
from torchvision.datasets import MNIST, CelebA, ImageFolder
out = resnet18(weights=None).eval()(torch.rand(1, 3, 64, 64))
assert out.shape == (1, 1000)
print(_compat.patched)
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_pgd_makes_torchvision_work_and_patches_only_when_a_plain_import_fails():
    plain = _python("import torchvision")
    with_pgd = _python(CHECK)
    assert with_pgd.returncode == 0, with_pgd.stderr
    patched = with_pgd.stdout.strip().splitlines()[-1] == "True"
    if plain.returncode == 0:
        assert not patched  # Colab and CUDA machines: nothing is declared
    else:
        assert "torchvision::nms" in plain.stderr  # the one failure the fix is for
        assert patched


def test_other_import_errors_are_not_hidden(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('something else is broken')\n")
    result = subprocess.run(
        [sys.executable, "-c", "import pgd"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "something else is broken" in result.stderr
