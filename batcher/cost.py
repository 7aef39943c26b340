"""What one request may cost: the figures a budget and an estimate count.

Output tokens are exact as a worst case: the sum of ``max_tokens``. Input
tokens are a local estimate, since Claude's tokenizer is not public:
:func:`input_tokens_estimate` counts the UTF-8 bytes of everything the model
reads and allows 3.5 bytes per token (Anthropic's rule of thumb for English
text; counting bytes rather than characters weighs non-Latin scripts, which
take more tokens per character, more heavily). Images count a flat
:data:`IMAGE_TOKENS`. The batcher simulator counts characters/4 over the
text of the system prompt and messages (a heuristic of its own, not a
tokenizer), so on plain ASCII prompts this estimate is 8/7 of its count,
14% above, within a token per job of rounding. Against the real API expect
English prose within about 15%; code, JSON and non-Latin text run higher,
and very short prompts higher still (every message carries a few tokens of
framing the estimate does not count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

#: Bytes of text per input token (Anthropic's ~3.5 characters for English).
BYTES_PER_TOKEN = 3.5
#: A typical image (about a megapixel) costs Claude about this many tokens.
IMAGE_TOKENS = 1600
_PER_TOKEN, _PER_BYTE = BYTES_PER_TOKEN.as_integer_ratio()  # 7 bytes, 2 tokens


@dataclass(frozen=True, slots=True)
class Cost:
    """Tokens a request may use at most (output) or is expected to use (input)."""

    input_tokens: int
    output_tokens: int


#: Jobs and what they cost, by model: ``{model: [jobs, input estimate, max_tokens]}``.
CostSums = dict[str, list[int]]


def add_cost(sums: CostSums, model: str, input_tokens: int, output_tokens: int, jobs: int = 1) -> None:
    """Count ``jobs`` more of ``model`` into ``sums``, costing the tokens given together.

    >>> sums: CostSums = {}
    >>> add_cost(sums, "claude-haiku-4.5", 4, 512); add_cost(sums, "claude-haiku-4.5", 6, 256)
    >>> sums
    {'claude-haiku-4.5': [2, 10, 768]}
    """
    figures = sums.get(model)
    if figures is None:
        sums[model] = [jobs, input_tokens, output_tokens]
    else:
        figures[0] += jobs
        figures[1] += input_tokens
        figures[2] += output_tokens


def merge_costs(into: CostSums, more: CostSums) -> CostSums:
    """``into`` with ``more`` counted in too (``more`` stays as it is)."""
    for model, (jobs, input_tokens, output_tokens) in more.items():
        add_cost(into, model, input_tokens, output_tokens, jobs)
    return into


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _content_size(content: Any) -> tuple[int, int]:
    """(bytes of text, images) of a content value: a string or a list of blocks."""
    if isinstance(content, str):
        return _utf8_len(content), 0
    size = images = 0
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            text = block.get("text")
            if isinstance(text, str):
                size += _utf8_len(text)
            elif kind == "image":
                images += 1
            elif kind == "tool_result":
                inner, pictures = _content_size(block.get("content"))
                size, images = size + inner, images + pictures
            elif kind == "tool_use":
                size += len(orjson.dumps(block.get("input")))
    return size, images


def input_tokens_estimate(body: dict[str, Any]) -> int:
    """Tokens the request's input is expected to cost (see the module docstring).

    Counts the system prompt, every message's text, tool calls and results,
    and the tool definitions; at least 1.
    """
    # Import costs every line, so the common case (string contents) runs without a call.
    system = body.get("system")
    size, images = (0, 0) if system is None else _content_size(system)
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if type(content) is str:
            size += len(content) if content.isascii() else len(content.encode("utf-8", "surrogatepass"))
        elif content is not None:
            text, pictures = _content_size(content)
            size, images = size + text, images + pictures
    if body.get("tools"):
        size += len(orjson.dumps(body["tools"]))
    tokens = -(-size * _PER_BYTE // _PER_TOKEN)  # size / BYTES_PER_TOKEN rounded up, without a slow float division
    return (tokens if tokens > 0 else 1) + images * IMAGE_TOKENS


def request_cost(body: dict[str, Any]) -> Cost:
    """A request's worst case for a budget: estimated input, ``max_tokens`` output.

    Any body is costed, even one the API will refuse (an API batch's requests
    are sent as given): a ``max_tokens`` that is not a whole number counts 0.

    >>> request_cost({"max_tokens": 512, "messages": [{"role": "user", "content": "Hello, Claude"}]})
    Cost(input_tokens=4, output_tokens=512)
    """
    max_tokens = body.get("max_tokens")
    return Cost(input_tokens_estimate(body), max_tokens if type(max_tokens) is int else 0)


def model_and_cost(body: dict[str, Any]) -> tuple[str, Cost]:
    """A request's model ("" if it names none, as an API batch's request may) and its worst case.

    >>> model_and_cost({"model": "claude-haiku-4.5", "max_tokens": 512, "messages": []})
    ('claude-haiku-4.5', Cost(input_tokens=1, output_tokens=512))
    """
    model = body.get("model")
    return model if isinstance(model, str) else "", request_cost(body)
