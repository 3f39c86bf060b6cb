"""Plugins: modules that register datasets or methods when imported.

A plugin is a Python file or an importable module whose import calls
:func:`pgd.datasets.registry.register_dataset` or :func:`pgd.methods.registry.register_method`
(``book/examples/plugin_method.py`` and ``plugin_dataset.py`` are two). In Python, importing it
is all it takes; the command line loads those named by ``--plugin PATH_OR_MODULE`` (before the
sub-command, repeatable) and by the environment variable ``PGD_PLUGINS`` (separated by
``os.pathsep``, ``:`` on Linux).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .errors import PgdError

PLUGINS_ENV = "PGD_PLUGINS"


def load_plugin(reference: str) -> ModuleType:
    """Import the plugin ``reference``: a ``.py`` file (its path) or a module name. A file is
    imported once per process, as the module ``pgd_plugin_<file stem>``.

    Raises:
        PgdError: no such file or module (the plugin's own import errors keep their traceback).
    """
    text = reference.strip()
    path = Path(text).expanduser()
    if text.endswith(".py") or path.is_file():
        if not path.is_file():
            raise PgdError(f"plugin {text}: no such file")
        name = f"pgd_plugin_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PgdError(f"plugin {text}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    if importlib.util.find_spec(text) is None:
        raise PgdError(
            f"plugin {text}: neither a .py file nor an importable module (give a file's path, "
            "or install the module)"
        )
    return importlib.import_module(text)


def plugins_from_environment() -> list[str]:
    """The plugins that ``$PGD_PLUGINS`` names, in order."""
    return [p for p in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if p.strip()]


def split_plugin_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(plugins, the other arguments)``: the ``--plugin X`` / ``--plugin=X`` options given
    before the sub-command, taken out of ``argv``.

    Raises:
        PgdError: ``--plugin`` without a value.
    """
    plugins: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--plugin":
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise PgdError("--plugin needs a value: a .py file or a module name")
            plugins.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--plugin="):
            plugins.append(arg.split("=", 1)[1])
            i += 1
            continue
        if not arg.startswith("-"):  # the sub-command: the rest is its own
            return plugins, rest + argv[i:]
        rest.append(arg)
        i += 1
    return plugins, rest
