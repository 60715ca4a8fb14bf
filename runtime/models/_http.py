"""The HTTP seam every model backend shares: one pooled client per backend, provider errors
mapped to the ``ModelError`` tree, ``retry-after`` read, stalls and deadlines turned into
``ModelTimeout``.

Why one seam: no ``httpx`` exception may escape the public API (STYLE §6.5), and the status →
error rules (429, 5xx/529, context length, other 4xx) are the same for every provider; only the
shape of the error body differs, so each backend passes a small ``describe`` function that
reads its provider's body.

Timeouts: a *stall* is no byte for ``stall_timeout_s`` (httpx's per-read timeout, which is
exactly that); the whole exchange is bounded by ``timeout_s``. Both raise ``ModelTimeout``.
The caller's own trio cancel scope always wins: a cancelled caller sees ``trio.Cancelled``,
never a ``ModelError``, and the connection is closed on the way out.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Final, NoReturn

import httpx
import msgspec
import trio
from httpx_sse import EventSource, ServerSentEvent

from .._errors import (
    ContextTooLong,
    MalformedModelOutput,
    ModelError,
    ModelOverloaded,
    ModelRequestRejected,
    ModelTimeout,
    RateLimited,
)

__all__ = [
    "DEFAULT_RETRY_AFTER_S",
    "Describe",
    "HttpSession",
    "ProviderError",
    "error_for_status",
    "parse_retry_after",
]

DEFAULT_RETRY_AFTER_S: Final = 1.0
"""Wait asked of the caller after a 429 that carries no ``retry-after`` header."""


class ProviderError:
    """What a provider's error body says: its message, and whether it is the context-length
    error (each provider words that differently)."""

    __slots__ = ("context_too_long", "message")

    def __init__(self, message: str, *, context_too_long: bool = False) -> None:
        self.message = message
        self.context_too_long = context_too_long


Describe = Callable[[int, bytes], ProviderError]
"""Reads one provider's error body (status, raw bytes) into a ``ProviderError``."""


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI), ``retry-after`` in seconds, or
    ``retry-after`` as an HTTP-date (RFC 9110 allows both); ``None`` when absent or unreadable.

    A date in the past means "now" (0 s): clocks drift, and a negative wait means nothing.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_for_status(
    backend: str,
    model: str,
    status: int,
    headers: Mapping[str, str],
    said: ProviderError,
    *,
    where: str = "",
) -> ModelError:
    """The typed error for an HTTP error answer; the same rules for every provider.

    ``where`` replaces ``HTTP <status>`` in the message for an error reported inside a 200
    stream (``status`` is then the equivalent status, used only to classify it).
    """
    words = said.message or "(no message in the error body)"
    where = where or f"HTTP {status}"
    if status == 429:
        wait = parse_retry_after(headers)
        note = "" if wait is not None else " (no retry-after header; default wait)"
        wait = DEFAULT_RETRY_AFTER_S if wait is None else wait
        return RateLimited(
            backend,
            model,
            f"rate limited ({where}): {words}; retry after {wait:g} s{note}",
            retry_after=wait,
        )
    if said.context_too_long:
        return ContextTooLong(
            backend,
            model,
            f"the prompt does not fit the model's context window ({where}): {words}; "
            "shorten the conversation or use a model with a larger context",
            status=status,
        )
    if status >= 500:
        return ModelOverloaded(
            backend,
            model,
            f"the server failed or is overloaded ({where}): {words}; "
            "retry later or fall back to another model",
            status=status,
        )
    return ModelRequestRejected(
        backend,
        model,
        f"the server refused the request ({where}): {words}; fix the request or the "
        "backend's configuration (url, api_key, model name): retrying it unchanged will not help",
        status=status,
    )


class HttpSession:
    """One provider endpoint: a pooled ``httpx.AsyncClient`` plus the error seam.

    Backends own one session each and close it in ``aclose``; the pool keeps connections
    alive between calls (the scheduler makes many small calls to the same server).
    """

    def __init__(
        self,
        backend: str,
        url: str,
        describe: Describe,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 120.0,
        stall_timeout_s: float = 30.0,
    ) -> None:
        if timeout_s <= 0 or stall_timeout_s <= 0:
            raise ValueError(
                f"backend {backend!r}: timeout_s ({timeout_s}) and stall_timeout_s "
                f"({stall_timeout_s}) must be positive"
            )
        self.backend = backend
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.stall_timeout_s = stall_timeout_s
        self._describe = describe
        stall = self._read_timeout = min(stall_timeout_s, timeout_s)
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=dict(headers or {}),
            timeout=httpx.Timeout(connect=stall, read=stall, write=stall, pool=timeout_s),
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=128),
            trust_env=False,  # a developer's proxy variables must not reroute a local model
        )

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._client.aclose()

    async def get(self, path: str, *, model: str = "") -> bytes:
        """GET ``path`` within ``timeout_s``; the body of a 2xx answer."""
        body, _ = await self._exchange("GET", path, None, model)
        return body

    async def post(self, path: str, body: bytes, *, model: str) -> tuple[bytes, float]:
        """POST a JSON body within ``timeout_s``; the 2xx answer's body and the latency (s)."""
        return await self._exchange("POST", path, body, model)

    async def _exchange(
        self, method: str, path: str, body: bytes | None, model: str
    ) -> tuple[bytes, float]:
        with trio.move_on_after(self.timeout_s):
            with self.translate(model):
                started = time.perf_counter()
                response = await self._client.request(
                    method, path, content=body, headers=_JSON if body is not None else None
                )
                latency = time.perf_counter() - started
            if response.status_code >= 300:
                self.raise_for_status(
                    model, response.status_code, response.headers, response.content
                )
            return response.content, latency
        self.raise_deadline(model)

    @asynccontextmanager
    async def stream(self, path: str, body: bytes, *, model: str) -> AsyncIterator[Stream]:
        """POST and hand over the streaming response once its status is 2xx.

        Read errors while the caller iterates are translated here too; the caller checks the
        overall deadline per piece with ``Stream.check_deadline`` (a cancel scope cannot span
        the ``yield`` of an async generator under trio).
        """
        deadline = trio.current_time() + self.timeout_s
        with self.translate(model):
            started = time.perf_counter()
            async with self._client.stream("POST", path, content=body, headers=_JSON) as response:
                if response.status_code >= 300:
                    with trio.move_on_at(deadline):
                        content = await response.aread()
                        self.raise_for_status(
                            model, response.status_code, response.headers, content
                        )
                    self.raise_deadline(model)
                yield Stream(self, model, response, deadline, started)

    def raise_for_status(
        self, model: str, status: int, headers: Mapping[str, str], content: bytes
    ) -> NoReturn:
        raise error_for_status(
            self.backend, model, status, headers, self._describe(status, content)
        )

    def stream_error(self, model: str, status: int, said: ProviderError) -> ModelError:
        """An error the provider reported inside a stream that began as 200 (Ollama's
        ``{"error"}`` line, Anthropic's ``error`` event); ``status`` is its equivalent."""
        return error_for_status(self.backend, model, status, {}, said, where="error in the stream")

    def raise_deadline(self, model: str) -> NoReturn:
        raise ModelTimeout(
            self.backend,
            model,
            f"no complete answer within timeout_s={self.timeout_s:g} s; the model is too slow "
            "for this deadline: raise timeout_s or use a faster model",
        )

    def malformed(
        self, model: str, what: str, raw: bytes | str, exc: Exception
    ) -> MalformedModelOutput:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if isinstance(exc, msgspec.ValidationError):
            problem = f"the server sent {what} in an unexpected shape ({exc}); the server "
            problem += "does not speak this protocol as documented: check the backend's kind"
        else:
            problem = f"the server sent {what} that is not valid JSON ({exc}); the server or a "
            problem += "proxy in between is broken"
        return MalformedModelOutput(self.backend, model, problem, raw=text)

    @contextmanager
    def translate(self, model: str) -> Iterator[None]:
        """Turn every ``httpx`` failure into the ``ModelError`` that says what happened."""
        try:
            yield
        except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            raise ModelTimeout(
                self.backend,
                model,
                f"{self.url} sent no byte for {self._read_timeout:g} s (stall_timeout_s="
                f"{self.stall_timeout_s:g}, timeout_s={self.timeout_s:g}): the server is stuck "
                "or overloaded; raise stall_timeout_s or use another model",
            ) from exc
        except httpx.PoolTimeout as exc:
            raise ModelTimeout(
                self.backend,
                model,
                f"no free connection to {self.url} within timeout_s={self.timeout_s:g} s; "
                "too many calls are in flight to this backend",
            ) from exc
        except httpx.ConnectTimeout as exc:
            raise ModelOverloaded(
                self.backend,
                model,
                f"cannot connect to {self.url} within {self.stall_timeout_s:g} s; "
                "check that the server is running and reachable",
            ) from exc
        except httpx.ConnectError as exc:
            raise ModelOverloaded(
                self.backend,
                model,
                f"cannot connect to {self.url} ({exc}); check that the server is running and "
                "that the backend's url is right",
            ) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise ModelOverloaded(
                self.backend,
                model,
                f"the connection to {self.url} broke before the answer was complete ({exc}); "
                "the server crashed or restarted: retry or fall back to another model",
            ) from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ModelRequestRejected(
                self.backend,
                model,
                f"the url {self.url!r} cannot be used ({exc}); set an http:// or https:// url",
            ) from exc
        except httpx.HTTPError as exc:
            raise ModelOverloaded(
                self.backend,
                model,
                f"the exchange with {self.url} failed ({type(exc).__name__}: {exc}); "
                "retry or fall back to another model",
            ) from exc


class Stream:
    """A streaming answer in progress (status already 2xx)."""

    __slots__ = ("_deadline", "_session", "model", "response", "started")

    def __init__(
        self,
        session: HttpSession,
        model: str,
        response: httpx.Response,
        deadline: float,
        started: float,
    ) -> None:
        self._session, self.model, self.response = session, model, response
        self._deadline, self.started = deadline, started

    def check_deadline(self) -> None:
        """Raise ``ModelTimeout`` once the whole exchange has run past ``timeout_s``."""
        if trio.current_time() > self._deadline:
            self._session.raise_deadline(self.model)

    def latency(self) -> float:
        return time.perf_counter() - self.started

    def events(self) -> AsyncGenerator[ServerSentEvent, None]:
        """The SSE events of the answer (close it with ``contextlib.aclosing``).

        Raises:
            MalformedModelOutput: the answer is not ``text/event-stream``.
        """
        kind = self.response.headers.get("content-type", "")
        if "text/event-stream" not in kind:
            raise MalformedModelOutput(
                self._session.backend,
                self.model,
                f"the server answered a streamed request with content-type {kind!r}, not "
                "text/event-stream; the server does not support streaming here",
            )
        return EventSource(self.response).aiter_sse()


_JSON: Final = {"content-type": "application/json"}
