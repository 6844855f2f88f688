"""Waiting on conditions with a deadline: tests never sleep as a way to synchronise."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """Call `predicate` (sync or async) until it returns something truthy; return that.

    Raises TimeoutError naming `message` (or the predicate) when `timeout` seconds pass first.
    Exceptions from the predicate propagate: catch them inside it if they mean "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"condition not met within {timeout}s: {what}")
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """The same for plain code outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"condition not met within {timeout}s: {what}")
        time.sleep(interval)
