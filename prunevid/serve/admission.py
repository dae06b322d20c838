"""Admission and the generation slot: who may wait, who may generate.

A request takes a ticket on arrival, before its body is read or its video touched; at most
``1 + queue`` tickets exist at once, so the rest get 429 at no cost. A ticket becomes the slot
holder when the one generation slot is free (bounded wait: 429 after ``queue_timeout_s``). The slot
is given back when the generation thread has stopped, not when the client left, so two answers never
run at once.
"""

from __future__ import annotations

import asyncio

from prunevid.serve.protocol import ApiError


def overloaded(message: str, retry_after: int = 1) -> ApiError:
    return ApiError(429, message, "server_overloaded", outcome="rejected_queue",
                    headers={"Retry-After": str(retry_after)})


class Ticket:
    """One admitted request: waiting, then running, then done (idempotent)."""

    def __init__(self, admission: Admission):
        self.admission, self.state = admission, "waiting"

    async def run(self, timeout: float) -> None:
        """Wait for the generation slot; 429 after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self.admission.slot.acquire(), timeout)
        except asyncio.TimeoutError:
            raise overloaded(f"no generation slot within {timeout:g} s", retry_after=max(1, int(timeout))) from None
        self.admission.waiting -= 1
        self.admission.running += 1
        self.state = "running"

    def done(self) -> None:
        """Leave the queue, or give the slot back."""
        if self.state == "waiting":
            self.admission.waiting -= 1
        elif self.state == "running":
            self.admission.running -= 1
            self.admission.slot.release()
        self.state = "done"


class Admission:
    """Ticket counter and the generation slots, one unless several engines answer (event-loop side
    only; not thread-safe)."""

    def __init__(self, queue: int, slots: int = 1):
        self.capacity = slots + queue
        self.waiting = 0
        self.running = 0
        self.peak = 0  # most requests ever in at once (never above capacity)
        self.slot = asyncio.Semaphore(slots)

    def enter(self) -> Ticket:
        """A ticket, or 429 with Retry-After when ``1 + queue`` requests are already in."""
        if self.waiting + self.running >= self.capacity:
            raise overloaded(f"the server is busy ({self.running} running, {self.waiting} waiting); retry later")
        self.waiting += 1
        self.peak = max(self.peak, self.waiting + self.running)
        return Ticket(self)

    @property
    def idle(self) -> bool:
        return self.waiting == 0 and self.running == 0
