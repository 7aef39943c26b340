"""Spend caps for one run: how many tokens it may still commit to.

A cap must hold however many requests are in flight, so admission counts
every request's worst case, not its likely cost: a request may start only if

    tokens this run has used + worst case of every request in flight
    + its own worst case  <=  the cap

for input and output separately. The worst case of output is the request's
``max_tokens`` (the API never returns more); for input it is the local
estimate (:mod:`batcher.cost`), which is as good as that estimate. When
an answer arrives its reservation is replaced by what the API reported, which
is usually less, so room opens up for the requests waiting behind it.

Pure accounting: no HTTP, no SQL, no clock. The runner asks
:meth:`Budget.reserve` before the pacer and calls :meth:`Budget.settle` when
the attempt is over.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cost import Cost


@dataclass(frozen=True, slots=True)
class Caps:
    """The run's caps; None means no cap on that side."""

    max_input_tokens: int | None = None
    max_output_tokens: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("max_input_tokens", self.max_input_tokens), ("max_output_tokens", self.max_output_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number of tokens, not {value}")

    @property
    def any(self) -> bool:
        return self.max_input_tokens is not None or self.max_output_tokens is not None

    def exceeded_alone(self, cost: Cost) -> str | None:
        """Which cap a single request's worst case exceeds on its own, if any."""
        if self.max_output_tokens is not None and cost.output_tokens > self.max_output_tokens:
            return "output"
        if self.max_input_tokens is not None and cost.input_tokens > self.max_input_tokens:
            return "input"
        return None


class Budget:
    """Used and reserved tokens of one run under its :class:`Caps`."""

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.used_input = 0
        self.used_output = 0
        self.reserved_input = 0
        self.reserved_output = 0
        self.in_flight = 0

    def fits(self, cost: Cost) -> bool:
        """Whether ``cost`` can be reserved now without risking a cap."""
        caps = self.caps
        if caps.max_output_tokens is not None and \
                self.used_output + self.reserved_output + cost.output_tokens > caps.max_output_tokens:
            return False
        if caps.max_input_tokens is not None and \
                self.used_input + self.reserved_input + cost.input_tokens > caps.max_input_tokens:
            return False
        return True

    def reserve(self, cost: Cost) -> bool:
        """Reserve ``cost`` for a request about to start; False if it does not fit."""
        if not self.fits(cost):
            return False
        self.reserved_input += cost.input_tokens
        self.reserved_output += cost.output_tokens
        self.in_flight += 1
        return True

    def settle(self, cost: Cost, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """The request reserved with ``cost`` is over and used these tokens (0 when it failed)."""
        self.reserved_input -= cost.input_tokens
        self.reserved_output -= cost.output_tokens
        self.in_flight -= 1
        self.used_input += input_tokens
        self.used_output += output_tokens

    def exhausted_side(self, cost: Cost) -> str:
        """Which cap keeps ``cost`` out ("output" or "input"), for the message."""
        caps = self.caps
        if caps.max_output_tokens is not None and \
                self.used_output + self.reserved_output + cost.output_tokens > caps.max_output_tokens:
            return "output"
        return "input"
