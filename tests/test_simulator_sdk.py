"""The official anthropic SDK against the simulator: it must take it for the real API."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

MODEL = "claude-sonnet-4.5"


def sdk(sim: Any, key: str = "sdk-key", **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=sim.base_url, **{"max_retries": 0, **options})


def ask(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": prompt}], **extra}


def test_create_returns_a_message(simulator: Any) -> None:
    client = sdk(simulator())
    msg = client.messages.create(**ask("Name three rivers in Europe", system="Be brief."))
    assert isinstance(msg, anthropic.types.Message)
    assert msg.id.startswith("msg_") and msg.model == MODEL and msg.role == "assistant"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.content[0].type == "text" and msg.content[0].text.startswith("Answer to: Name three rivers in Europe")
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens == len(msg.content[0].text.split())
    assert msg._request_id is not None and msg._request_id.startswith("req_")


def test_stream_matches_the_non_streamed_message(simulator: Any) -> None:
    client = sdk(simulator())
    params = ask("Describe a quiet harbour at dawn", stop_sequences=["harbour"])
    plain = client.messages.create(**params)
    with client.messages.stream(**params) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == plain.content[0].text == "Answer to: Describe a quiet "
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "harbour"
    streamed = final.to_dict()
    streamed.pop("stop_details", None)  # the SDK copies this from message_delta even when the server omits it
    assert streamed == plain.to_dict()
    assert final.usage.input_tokens == plain.usage.input_tokens  # kept from message_start


def test_rate_limit_error_once_the_window_is_full(simulator: Any) -> None:
    client = sdk(simulator(rpm=2, window=30))
    for _ in range(2):
        client.messages.create(**ask("hello"))
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(**ask("hello"))
    err = caught.value
    assert err.status_code == 429 and err.body["error"]["type"] == "rate_limit_error"
    assert float(err.response.headers["retry-after"]) > 29
    assert err.request_id is not None and err.request_id.startswith("req_")


def test_sdk_retries_through_injected_429s(simulator: Any) -> None:
    sim = simulator(seed=5, fail_429=0.5)  # injected 429s carry retry-after (window/rpm = 0.12 s)
    client = sdk(sim, max_retries=10)
    for i in range(5):
        assert client.messages.create(**ask(f"retry me {i}")).content[0].text
    stats = sim.stats()
    assert stats["succeeded"] == 5 and stats["status_429"] == stats["faults"]["429"] > 0


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, anthropic.BadRequestError),
        (402, anthropic.APIStatusError),
        (403, anthropic.PermissionDeniedError),
        (409, anthropic.ConflictError),
        (413, anthropic.APIStatusError),
        (500, anthropic.InternalServerError),
        (529, anthropic.InternalServerError),
    ],
)
def test_errors_map_to_sdk_exceptions(simulator: Any, status: int, error: type[Exception]) -> None:
    client = sdk(simulator.default)
    with pytest.raises(error) as caught:
        client.messages.create(**ask(f"#sim:status={status}"))
    assert caught.value.status_code == status  # type: ignore[attr-defined]


def test_auth_error_and_stream_error_event(simulator: Any) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        sdk(simulator(key="right"), key="wrong").messages.create(**ask("hi"))
    client = sdk(simulator(fail_stream_error=1))
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        with client.messages.stream(**ask("stream then fail")) as stream:
            for _ in stream.text_stream:
                pass
