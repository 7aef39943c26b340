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
    from ._api import arun, estimate, run
    from ._batch import Batch
    from ._handles import Store
    from ._results import Result
    from ._rows import InvalidRows
    from .errors import APIStopped, BatcherError, Interrupted, StoreError, UsageError
    from .jobqueue import BatchBusy
    from .estimator import Estimate
    from .runconfig import RunSummary

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

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batcher' has no attribute {name!r}")
    value = getattr(import_module(f"batcher.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
