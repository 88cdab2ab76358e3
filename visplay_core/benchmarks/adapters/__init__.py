"""The benchmarks, one module each (as lmms-eval gives each task its own place): a module defines
``ADAPTER``, and adding a module here adds a benchmark."""

import importlib
import pkgutil
import re

from ..core import Adapter, BenchmarkError

ADAPTERS: dict[str, Adapter] = {}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    _adapter = importlib.import_module(f"{__name__}.{_module}").ADAPTER
    ADAPTERS[_adapter.name] = _adapter


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name``, ignoring case, "-", "_" and spaces ("MMVet" is mm-vet)."""
    key = re.sub(r"[-_ ]", "", name.lower())
    for adapter in ADAPTERS.values():
        if adapter.name.replace("-", "") == key:
            return adapter
    raise BenchmarkError(f"unknown benchmark {name!r} (known: {', '.join(ADAPTERS)})")
