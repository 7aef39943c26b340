"""``batcher serve``: Anthropic's Message Batches API on this machine, over Poe.

A local HTTP server that the official SDKs take for Anthropic's API: Message
Batches (``client.messages.batches.*``) backed by the job store and the
runner, and ``POST /v1/messages`` (plain or streamed) and
``/v1/messages/count_tokens`` passed through upstream. Everything goes
through one pacer, interactive requests ahead of batch jobs, so every local
client together stays within the key's limit. Needs the ``serve`` extra
(Starlette and uvicorn); names load on first use, so registering the
command costs the CLI nothing, and the rest of batcher never imports this
package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import create_app
    from ._server import ServeOptions, serve

_WHERE = {"create_app": "_app", "ServeOptions": "_server", "serve": "_server"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batcher.serve' has no attribute {name!r}")
    return getattr(import_module(f"batcher.serve.{module}"), name)
