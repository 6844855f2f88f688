"""MLLP (Minimal Lower Layer Protocol) over TCP: framing, a reconnecting client, a server.

A frame is 0x0B, the message, 0x1C 0x0D. The client sends one message at a time and waits
for its acknowledgement (HL7 original mode); a connection that fails or stays silent past
the acknowledgement timeout is dropped and opened again with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("pathway.hl7.mllp")

START = b"\x0b"
END = b"\x1c\x0d"
DEFAULT_MAX_BYTES = 1_048_576


class FramingError(ValueError):
    """Bytes that are not an MLLP frame, or a frame over the size limit."""


def frame(message: str) -> bytes:
    return START + message.encode("utf-8") + END


async def read_frame(
    reader: asyncio.StreamReader, max_bytes: int = DEFAULT_MAX_BYTES
) -> str | None:
    """The next message, or None at a clean end of stream (the peer closed between frames).

    Bytes before the start block are refused (FramingError): a sender out of step is told
    so by a closed connection rather than by a guess at where its message begins.
    """
    first = await reader.read(1)
    if not first:
        return None
    if first != START:
        raise FramingError("data before the MLLP start block (0x0B)")
    try:
        body = await reader.readuntil(END)
    except asyncio.LimitOverrunError:
        raise FramingError(f"frame longer than the reader's limit ({max_bytes} bytes)") from None
    except asyncio.IncompleteReadError:
        raise FramingError("the connection closed in the middle of a frame") from None
    payload = body[: -len(END)]
    if len(payload) > max_bytes:
        raise FramingError(f"frame longer than {max_bytes} bytes")
    if START in payload:
        raise FramingError("a start block (0x0B) inside a frame")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        # Older RIS send Latin-1 (MSH-18 8859/1); every byte decodes, nothing is lost.
        return payload.decode("latin-1")


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Exponential with full jitter, so that gateways restarting together spread out."""
        ceiling = min(self.max_s, self.initial_s * (2 ** max(0, attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)


class AckTimeout(TimeoutError):
    pass


class Stopped(Exception):
    """The gateway is stopping: the message was not acknowledged and will be sent on restart."""


class MllpClient:
    """A connection to the RIS that sends a message and returns the answer it got."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ack_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.ack_timeout_s = ack_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff = backoff or Backoff()
        self.max_bytes = max_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None and self.connected:
            return self._reader, self._writer
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=self.max_bytes + 16),
            timeout=self.connect_timeout_s,
        )
        self._reader, self._writer = reader, writer
        self.connects += 1
        log.info("connected to the RIS")
        return reader, writer

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), timeout=2)

    async def exchange(self, message: str) -> str:
        """Send once and wait for the answer; OSError / AckTimeout / FramingError on failure."""
        reader, writer = await self._connect()
        try:
            writer.write(frame(message))
            await writer.drain()
            answer = await asyncio.wait_for(
                read_frame(reader, self.max_bytes), timeout=self.ack_timeout_s
            )
        except TimeoutError:
            await self.close()
            raise AckTimeout(f"no acknowledgement within {self.ack_timeout_s}s") from None
        except (OSError, FramingError):
            await self.close()
            raise
        if answer is None:
            await self.close()
            raise ConnectionResetError("the RIS closed the connection without answering")
        return answer

    async def send(
        self,
        message: str,
        *,
        stopping: asyncio.Event | None = None,
        on_retry: Callable[[int, Exception], None] | None = None,
    ) -> str:
        """Send until an answer comes back, reconnecting with backoff; the same bytes each time.

        Resending is safe: the message control id stays the same, so the RIS can see a repeat.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.exchange(message)
            except (OSError, AckTimeout, FramingError) as error:
                if on_retry is not None:
                    on_retry(attempt, error)
                delay = self.backoff.delay(attempt)
                log.warning(
                    "RIS unavailable, retrying",
                    extra={"error_class": type(error).__name__, "attempt": attempt},
                )
                if stopping is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), timeout=delay)
                    if stopping.is_set():
                        raise Stopped from error


# The server's handler answers one message (text) with one acknowledgement (text).
MessageHandler = Callable[[str], Awaitable[str]]
# Called when bytes on a connection cannot be framed; returns the answer to send, if any.
FramingHandler = Callable[[FramingError], Awaitable[str | None]]


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handle: MessageHandler,
    on_framing_error: FramingHandler,
    *,
    idle_timeout_s: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> None:
    """Answer each framed message in turn until the peer leaves, idles, or breaks framing."""
    try:
        while True:
            try:
                text = await asyncio.wait_for(read_frame(reader, max_bytes), timeout=idle_timeout_s)
            except TimeoutError:
                return
            except FramingError as error:
                answer = await on_framing_error(error)
                if answer is not None:
                    writer.write(frame(answer))
                    await writer.drain()
                return  # out of step: the peer reconnects and starts clean
            if text is None:
                return
            writer.write(frame(await handle(text)))
            await writer.drain()
    except (ConnectionError, OSError):
        return
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout=2)
