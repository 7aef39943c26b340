"""``batcher serve``: Anthropic's Message Batches API on this machine, over Poe.

A local HTTP server that the official SDKs take for Anthropic's API: Message
Batches (``client.messages.batches.*``) backed by the job store and the
runner, and ``POST /v1/messages`` (plain or streamed) and
``/v1/messages/count_tokens`` passed through upstream. Everything goes
through one pacer, interactive requests ahead of batch jobs, so every local
client together stays within the key's limit. Needs the ``serve`` extra
(Starlette and uvicorn); the rest of batcher never imports this package.
"""

from ._app import create_app
from ._server import ServeOptions, serve

__all__ = ["ServeOptions", "create_app", "serve"]
