"""batcher: push large prompt datasets through Claude on Poe, at the rate limit, losing nothing.

The Python face of the command line; both go through the same handles::

    import batcher

    results = batcher.run(["Summarise: ...", "Translate: ..."], model="claude-haiku-4.5", max_tokens=512)
    for r in results:
        print(r.custom_id, r.status, r.text)

    with batcher.Store("batcher.db") as store:
        b = store.add("reviews", rows)
        b.run(rpm=500)
        for r in b.results(only="succeeded"):
            ...

Names listed in ``__all__`` are the public API; every other module is
private. Names load on first use, so ``import batcher`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    # ``X as X``: a type checker takes the name as re-exported (mypy --strict, pyright).
    from ._api import arun as arun
    from ._api import estimate as estimate
    from ._api import run as run
    from ._batch import Batch as Batch
    from ._handles import Store as Store
    from ._results import Result as Result
    from ._rows import InvalidRows as InvalidRows
    from .errors import APIStopped as APIStopped
    from .errors import BatcherError as BatcherError
    from .errors import Interrupted as Interrupted
    from .errors import StoreError as StoreError
    from .errors import UsageError as UsageError
    from .estimator import Estimate as Estimate
    from .jobqueue import BatchBusy as BatchBusy
    from .runconfig import RunSummary as RunSummary

#: Where each public name lives, loaded on first use.
_WHERE = {
    "run": "_api",
    "arun": "_api",
    "estimate": "_api",
    "Estimate": "estimator",
    "Store": "_handles",
    "Batch": "_batch",
    "Result": "_results",
    "RunSummary": "runconfig",
    "BatcherError": "errors",
    "UsageError": "errors",
    "InvalidRows": "_rows",
    "BatchBusy": "jobqueue",
    "APIStopped": "errors",
    "StoreError": "errors",
    "Interrupted": "errors",
}

# Spelled out, not made from _WHERE: type checkers read only a literal list.
__all__ = [
    "__version__",
    "run",
    "arun",
    "estimate",
    "Estimate",
    "Store",
    "Batch",
    "Result",
    "RunSummary",
    "BatcherError",
    "UsageError",
    "InvalidRows",
    "BatchBusy",
    "APIStopped",
    "StoreError",
    "Interrupted",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batcher' has no attribute {name!r}")
    value = getattr(import_module(f"batcher.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names only: what a notebook's completion offers, not this module's own imports."""
    return sorted(__all__)
