"""Where things run and where files go: device, data root, run folders, seeds, provenance, and
the one warning format for results that could be mistaken for the real thing."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import random
import subprocess
import tempfile
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import PgdError

if TYPE_CHECKING:
    pass

DATA_ENV = "PGD_DATA"
RUNS_ENV = "PGD_RUNS"
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a usable :class:`torch.device`.

    Raises:
        RuntimeError: CUDA was asked for but this torch cannot see a GPU.
        ValueError: the name is none of the above.
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            )
            raise PgdError(
                f"CUDA was requested (device={name!r}) but no GPU is available to torch "
                f"{torch.__version__} ({build}). On Colab choose Runtime > Change runtime type > "
                "GPU; elsewhere use device='auto' or 'cpu' (command line: --device auto)."
            )
        return torch.device(name)
    raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} or 'cuda:N'")


def _writable_folder(path: Path, what: str, env: str) -> Path:
    path = path.expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        flag = what.split()[0]
        raise PermissionError(
            f"the {what} {str(path)!r} is not writable ({error.strerror or error}). Point "
            f"${env} (command line: --{flag}-root) at a folder you can write to, for example "
            f"`export {env}=$HOME/pgd-{flag}`."
        ) from error
    return path


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder datasets are downloaded to and cached in: ``root``, else ``$PGD_DATA``,
    else ``~/.cache/pgd``. It is created if needed.

    Raises:
        PermissionError: the folder cannot be created or written to.
    """
    chosen = root if root is not None else os.environ.get(DATA_ENV, "~/.cache/pgd")
    return _writable_folder(Path(chosen), "data root", DATA_ENV)


def runs_root(root: str | os.PathLike | None = None) -> Path:
    """The folder run checkpoints go to: ``root``, else ``$PGD_RUNS``, else ``./runs``."""
    chosen = root if root is not None else os.environ.get(RUNS_ENV, "runs")
    return _writable_folder(Path(chosen), "runs root", RUNS_ENV)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the legacy global generator others may use)
    torch.manual_seed(seed)


#: ``0`` hides the package's progress bars (the committed notebooks' setting).
PROGRESS_ENV = "PGD_PROGRESS"


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to draw a progress bar: ``progress`` where given; else not where
    ``$PGD_PROGRESS`` is 0 or tqdm's own ``$TQDM_DISABLE`` is set, and otherwise yes."""
    if progress is not None:
        return progress
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        return False
    return os.environ.get(PROGRESS_ENV, "1") != "0"


#: Layers left out of :func:`code_fingerprint`: nothing that trains or evaluates imports them
#: (tests/test_architecture.py checks it), so the version shows the code that computed a result.
NOT_IN_FINGERPRINT = ("book",)


@functools.cache
def code_fingerprint() -> str:
    """A short hash of the package's source that can change a result (every layer but the book
    layer's figures and notebook helpers): provenance of results tables and chapters. It is not
    part of a checkpoint's identity (see :data:`pgd.experiments.pipeline.RESULTS_VERSION`).

    Computed once per process, from the files as they were when first asked: a long run that
    outlives an edit of the package still reports the code it is running."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] in NOT_IN_FINGERPRINT:
            continue
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    """The CPU's model name (Linux: from /proc/cpuinfo), else its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_threads() -> str:
    """The threads torch computes with on the CPU, as a phrase: ``"1 thread"``, ``"2 threads"``."""
    n = torch.get_num_threads()
    return f"{n} thread" if n == 1 else f"{n} threads"


def provenance(device: torch.device | str | None = None) -> dict[str, str]:
    """What produced a result: device, platform, package versions and code version.

    Returns:
        A flat ``{name: value}`` dict, printed by every chapter and stored in every result file.
    """
    device = resolve_device(device or "auto")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        device_name = f"{device} ({torch.cuda.get_device_name(index)})"
    else:
        device_name = f"cpu ({cpu_threads()}, {_cpu_model()})"
    info = {
        "device": device_name,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",  # no kernel or host string
    }
    for package in ("pgd-book", "torch", "torchvision", "numpy", "mlxtend"):
        info[package] = _version(package)
    info["pgd code"] = code_fingerprint()
    commit = _git_commit()
    if commit:
        info["git commit"] = commit
    return info


#: Keys of the notices already printed by this process (see :func:`notice`).
_NOTICES_SHOWN: set[str] = set()
#: Width of printed notices: the book's site shows about 85 characters of an output line without
#: scrolling, and Jupyter and Colab more.
NOTICE_WIDTH = 84


def wrap(text: str) -> str:
    """``text`` with each of its lines wrapped at :data:`NOTICE_WIDTH` characters (words and
    hyphenated names kept whole)."""
    return "\n".join(
        textwrap.fill(line, NOTICE_WIDTH, break_long_words=False, break_on_hyphens=False)
        for line in text.split("\n")
    )


def print_wrapped(*parts: object) -> None:
    """Print ``parts`` joined into one message, each line wrapped at :data:`NOTICE_WIDTH`
    characters, so that no output line hides in a scroll box on the book's site. A part may hold
    ``\n`` to start a new line. Returns nothing, so that a notebook cell ending with it shows no
    ``Out[]`` value."""
    print(wrap("".join(str(part) for part in parts)), flush=True)


def notice(title: str, text: str, *, key: str | None = None) -> str | None:
    """Print ``NOTE: title. text``, wrapped at :data:`NOTICE_WIDTH` characters, once per process
    for its ``key`` (default: the title), and return it (None when it was shown already).

    Used where a result could be mistaken for the real thing (data other than the real dataset):
    a notebook that builds such data ten times says so once, in a few lines that need no
    scrolling, and a log says it beside the results.
    """
    key = key or title
    if key in _NOTICES_SHOWN:
        return None
    _NOTICES_SHOWN.add(key)
    text = wrap(f"NOTE: {title}. {text}")
    print(text, flush=True)
    return text


def loud_warning(title: str, *lines: str) -> str:
    """Print ``title`` and ``lines`` (wrapped at 84 characters) in a box of exclamation marks,
    and return the text.

    Used wherever a result would otherwise be mistaken for the real thing (data other than the
    real dataset, for instance). It goes to standard output so that notebooks keep it with their
    outputs and command-line logs keep it beside the results.
    """
    wrapped = [part for line in lines for part in textwrap.wrap(line, 84) or [""]]
    body = [f"!! {title.upper()}", *(f"!! {line}" for line in wrapped)]
    width = max(len(line) for line in body) + 3
    text = "\n".join(["!" * width, *(line.ljust(width - 2) + "!!" for line in body), "!" * width])
    print(text, flush=True)
    return text


class PGDWarning(UserWarning):
    """A warning of the ``pgd`` package about a result (not about the code that called it)."""


class ConcentratedSamplingWarning(PGDWarning):
    """A resampling method draws from so few effective samples that the resampled model will
    mostly see the same images again and again."""


def _project_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds a project (``pyproject.toml`` or a
    ``.git``), or None."""
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return None


def display_path(path: str | os.PathLike) -> str:
    """``path`` as a reader should see it in printed output: relative to the working directory
    when inside it or inside the same project (a notebook in ``notebooks/`` shows
    ``../_build/runs-full``), with ``~`` for the home folder, else as it is. Printed outputs
    that are committed then name no folder of the machine that made them."""
    path = Path(path)
    cwd = Path.cwd()
    try:
        return str(path.relative_to(cwd)) or "."
    except ValueError:
        pass
    project = _project_root(cwd)
    if project is not None and path.is_relative_to(project):
        return os.path.relpath(path, cwd)
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except (ValueError, RuntimeError):
        return str(path)


def show_warnings_briefly() -> None:
    """Print warnings as ``Category: message``, wrapped at 92 characters, without the file name
    and source line Python adds (in a notebook they name a temporary kernel file)."""

    def show(message, category, filename, lineno, file=None, line=None):
        import sys

        text = textwrap.fill(
            f"{category.__name__}: {message}", 92, subsequent_indent="  ", break_long_words=False
        )
        print(text, file=file or sys.stderr)

    warnings.showwarning = show


def _in_notebook() -> bool:
    """Whether tqdm draws its bars as notebook widgets here, as ``tqdm.auto`` decides (a Jupyter
    or Colab kernel with ipywidgets; without ipywidgets it falls back to text bars)."""
    from tqdm.auto import tqdm as auto_tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    return issubclass(auto_tqdm, notebook_tqdm)


class StageBar:
    """A progress bar over one training stage that leaves one summary line behind, not a bar.

    In a notebook the bar is a tqdm widget shown through a display handle, and :meth:`finish`
    replaces it with the line: a saved notebook then holds the line, where a closed widget would
    leave its first state (``0%| 0/20``) as text. Elsewhere the bar is drawn in the terminal and
    erased, and the line is printed. ``show=False``: no bar, only the line.
    """

    def __init__(self, iterable, *, show: bool, **options) -> None:
        self._handle = None
        if show and _in_notebook():
            from IPython.display import display
            from tqdm.notebook import tqdm as notebook_tqdm

            self.bar = notebook_tqdm(iterable, display=False, leave=False, **options)
            self._handle = display(self.bar.container, display_id=True)
        else:
            from tqdm.std import tqdm as terminal_tqdm

            self.bar = terminal_tqdm(iterable, disable=not show, leave=False, **options)

    def __iter__(self):
        return iter(self.bar)

    def set_postfix(self, **values) -> None:
        self.bar.set_postfix(**values)

    def finish(self, line: str | None) -> None:
        """Close the bar and leave ``line`` (wrapped) in its place; ``None``: leave nothing."""
        self.bar.close()
        text = wrap(line) if line is not None else ""
        if self._handle is not None:
            self._handle.update({"text/plain": text}, raw=True)
        elif line is not None:
            print_wrapped(line)
