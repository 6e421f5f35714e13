"""One upstream attempt: build the request, call the provider with aiohttp, relay the answer
to the edge (translated when the dialects differ), and report what happened in an ``Attempt``
for the fallback decision, the breakers and the facts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from runtime.secrets import resolve_secret
from schemas.envelope import ReplyStart, RequestEnvelope
from schemas.errors import stream_error
from schemas.events import Usage
from workers import translator
from workers.router.chat_usage import UsageChunkFilter, request_usage
from workers.router.gemini_array import ArrayFramer, wants_sse
from workers.router.plan import Candidate, cool_down_until, should_fail_over
from workers.router.providers import ProviderTable
from workers.router.reply import Reply
from workers.router.scrub import Scrubber, scrub_text
from workers.router.upstream import (
    UpstreamFailure,
    map_errors,
    rewrite_model,
    upstream_headers,
    upstream_url,
)
from workers.translator import TranslationContext, TranslationError
from workers.translator.usage import UsageTracker

log = logging.getLogger("codeswitch.router")

__all__ = ["Attempt", "Caller", "RequestBody", "keep_headers"]

_enc = msgspec.json.Encoder()
# Hold a stream's opening bytes until its first content event (or this much), so that an
# error event before any content can still fall back to the next provider.
_HOLD_LIMIT = 64 * 1024


@dataclass
class Attempt:
    """What one attempt produced; becomes an AttemptFinished fact."""

    candidate: Candidate
    number: int
    started_at: float
    outcome: str = "failed"
    status: int = 0
    error_class: str | None = None
    error_message: str | None = None
    ttfb_ms: float | None = None
    duration_ms: float = 0.0
    usage: Usage | None = None
    finish_reason: str | None = None
    committed: bool = False  # something reached the client
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    bytes_out: int = 0
    context: TranslationContext | None = None  # request-side state the response side needs
    conv: translator.StreamTranslator | None = None
    usage_filter: UsageChunkFilter | None = None  # Chat pass-through: we asked for usage
    body_dialect: str | None = None  # set when `body` is already in the client's dialect
    tracker: UsageTracker | None = None  # usage so far (read when the call is cut short)


class RequestBody:
    """One request's body: its bytes, and the JSON document decoded from them at most once,
    when an attempt first needs it (translation, token counts; a pass-through attempt sends
    the bytes). Every attempt of the request shares it: the codecs never change the document."""

    __slots__ = ("_doc", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._doc: dict[str, Any] | None = None

    def doc(self) -> dict[str, Any]:
        """The decoded document (TranslationError when the body is not a JSON object)."""
        if self._doc is None:
            self._doc = translator.parse_request(self.raw)
        return self._doc


class Caller:
    """Runs attempts with one shared aiohttp session."""

    def __init__(self, http: aiohttp.ClientSession, table: ProviderTable) -> None:
        self.http = http
        self.table = table

    async def run(self, env: RequestEnvelope, body: RequestBody, att: Attempt, reply: Reply,
                  has_next: bool, failover: list[int]) -> None:
        cand = att.candidate
        p = cand.provider
        started = time.perf_counter()
        same = not cand.translated
        stream = env.stream and env.operation == "generate"
        try:
            if env.operation == "count_tokens" and not same:
                if p.dialect in translator.COUNTING_DIALECTS:
                    try:  # the provider's own count of the translated request
                        await self._count_upstream(env, body, att, reply)
                        return
                    except Exception as exc:
                        log.info("count via %s failed (%s); estimating", p.name, exc)
                await self._estimate_tokens(env, body, att, reply)
                return
            if same:
                up_body = body.raw if p.dialect == "gemini" else rewrite_model(
                    body.raw, cand.upstream_model, env.model)
                if stream and p.dialect == "openai-chat":
                    with_usage = request_usage(up_body)
                    if with_usage is not None:
                        up_body, att.usage_filter = with_usage, UsageChunkFilter()
            else:
                try:
                    prepared = translator.prepare(
                        env.dialect, p.dialect, body.raw, doc=body.doc(),
                        model=cand.upstream_model, stream=stream,
                        chat_max_tokens=p.max_tokens_field())
                except TranslationError:
                    raise
                except Exception as exc:  # a body the codecs did not expect: the client's 400
                    log.warning("request %s could not be translated %s -> %s: %s",
                                env.request_id, env.dialect, p.dialect, type(exc).__name__)
                    raise TranslationError(
                        f"the request could not be read as {env.dialect} for a {p.dialect} "
                        f"provider ({type(exc).__name__})") from None
                up_body, att.context = prepared.body, prepared.context
            url = upstream_url(
                p, operation=env.operation, model=cand.upstream_model, stream=stream,
                query=env.query if same and p.dialect == "anthropic" else "",
                sse=not (same and p.dialect == "gemini" and not wants_sse(env.query)))
            headers = upstream_headers(p, env.headers, same_dialect=same)
            # every byte from the upstream is scrubbed of the secrets we sent it
            scrub = Scrubber(secret_values(p, headers))
            t = p.timeouts
            # sock_read is the idle timeout between two reads of a stream; a non-streaming
            # answer may take up to first_byte to arrive.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect,
                                            sock_read=t.idle if stream else t.first_byte)
            async with asyncio.timeout(t.total):
                with map_errors("connect"):
                    async with asyncio.timeout(t.first_byte):
                        resp = await self.http.request("POST", url, data=up_body,
                                                       headers=headers, timeout=timeout)
                try:
                    if resp.status >= 400:
                        with map_errors("error body"):
                            err_body = await resp.read()
                        # some providers echo the key they were sent: it goes no further
                        err_body = scrub.whole(err_body)
                        raise UpstreamFailure(
                            f"http_{resp.status}", _error_text(err_body), resp.status,
                            err_body, keep_headers(resp.headers, scrub))
                    if stream:
                        await self._stream(env, resp, cand, att, started, reply, scrub)
                    else:
                        await self._whole(env, resp, cand, att, started, reply, scrub)
                finally:
                    # After a complete body the connection goes back to the pool; otherwise
                    # (cancelled, cut, failed) it is closed, so the upstream sees us leave.
                    if resp.content.at_eof():
                        resp.release()
                    else:
                        resp.close()
        except UpstreamFailure as exc:
            att.error_class = exc.error_class
            att.error_message = scrub_text(exc.message, secret_values(p, {}))
            if not att.committed:
                att.status = exc.upstream_status
            att.body, att.headers = exc.body, exc.headers
            att.body_dialect = exc.body_dialect
            now = time.monotonic()
            until = cool_down_until(exc.status, exc.headers, now)
            if until is not None:
                self.table.cool_down(p.name, until, now)
            if att.committed:
                att.outcome = "failed"
                await self._end_stream_with_error(env, att, exc, reply)
            elif exc.upstream_status == 0 or exc.error_class == "stream_error" \
                    or should_fail_over(exc.upstream_status, has_next=has_next,
                                        statuses=failover):
                att.outcome = "fallback" if has_next else "failed"
            else:
                att.outcome = "failed"
        except TimeoutError:
            att.error_class, att.error_message = "timeout", "upstream timed out"
            if att.committed:
                att.outcome = "failed"
                await self._end_stream_with_error(
                    env, att, UpstreamFailure("timeout", "upstream timed out", 504), reply)
            else:
                att.outcome = "fallback" if has_next else "failed"
        except TranslationError as exc:
            att.status, att.error_class, att.error_message = exc.status, exc.code, exc.message
            att.body, att.body_dialect = exc.render(env.dialect), env.dialect
            att.headers = {"x-codeswitch-translated": "1"}
            # this provider's dialect cannot express the request; another provider may
            att.outcome = "fallback" if has_next else "failed"
        finally:
            att.duration_ms = (time.perf_counter() - started) * 1000

    async def _whole(self, env: RequestEnvelope, resp: aiohttp.ClientResponse,
                     cand: Candidate, att: Attempt, started: float, reply: Reply,
                     scrub: Scrubber) -> None:
        with map_errors("body"):
            data = scrub.whole(await resp.read())
        att.ttfb_ms = (time.perf_counter() - started) * 1000
        att.status = resp.status
        p = cand.provider
        tracker = UsageTracker(p.dialect, False)
        tracker.feed(data)
        tracker.finish()
        att.usage, att.finish_reason = tracker.usage, tracker.finish_reason
        if cand.translated:
            try:
                data = translator.translate_response(p.dialect, env.dialect, data,
                                                     model=env.model, request_id=env.request_id,
                                                     context=att.context)
            except Exception as exc:
                # an answer the client's dialect cannot express (TranslationError, e.g. Gemini
                # MALFORMED_FUNCTION_CALL) or cannot be read at all: the provider failed, so
                # the next one may answer; if none does, the client gets this, in its dialect
                err = exc if isinstance(exc, TranslationError) else TranslationError(
                    f"unreadable {p.dialect} answer from {p.name} ({type(exc).__name__})", 502)
                kind = "translation" if err is exc else "protocol"
                raise UpstreamFailure(kind, err.message, err.status, err.render(env.dialect),
                                      body_dialect=env.dialect) from exc
        start = ReplyStart(status=resp.status,
                           content_type=resp.headers.get("content-type", "application/json"),
                           provider=p.name, upstream_model=cand.upstream_model,
                           headers=keep_headers(resp.headers, scrub))
        await reply.full(start, data)
        att.committed = True
        att.outcome = "ok"
        att.bytes_out = len(data)

    async def _stream(self, env: RequestEnvelope, resp: aiohttp.ClientResponse,
                      cand: Candidate, att: Attempt, started: float, reply: Reply,
                      scrub: Scrubber) -> None:
        p = cand.provider
        tracker = att.tracker = UsageTracker(p.dialect, True)
        conv = att.conv = (
            translator.StreamTranslator(p.dialect, env.dialect, model=env.model,
                                        request_id=env.request_id, context=att.context)
            if cand.translated else None)
        framer = (ArrayFramer() if conv is not None and env.dialect == "gemini"
                  and not wants_sse(env.query) else None)
        held: list[bytes] = []
        held_size = 0
        if framer is not None:
            ctype = "application/json; charset=utf-8"
        elif conv is not None:
            ctype = "text/event-stream; charset=utf-8"
        else:
            ctype = resp.headers.get("content-type", "text/event-stream")
        start = _enc.encode(ReplyStart(status=200, content_type=ctype, provider=p.name,
                                       upstream_model=cand.upstream_model,
                                       headers=keep_headers(resp.headers, scrub),
                                       router=reply.router, route=reply.route))
        with map_errors("stream"):
            async for chunk in _reads(resp, scrub):
                if att.ttfb_ms is None:
                    att.ttfb_ms = (time.perf_counter() - started) * 1000
                with _unreadable(p.dialect):
                    tracker.feed(chunk)
                    if conv is not None:
                        out = conv.feed(chunk)
                        if framer is not None:
                            out = framer.feed(out)
                    elif att.usage_filter is not None:
                        out = att.usage_filter.feed(chunk)
                    else:
                        out = chunk
                if not att.committed:
                    if tracker.error is not None and not tracker.saw_content:
                        raise UpstreamFailure("stream_error", f"{tracker.error[0]}: "
                                              f"{tracker.error[1]}"[:300], 200)
                    if out:
                        held.append(out)
                        held_size += len(out)
                    if tracker.saw_content or held_size > _HOLD_LIMIT:
                        # start and the held bytes in one message: start JSON, \n, data
                        data = b"".join(held)
                        await reply.start(start, data)
                        att.committed, att.status = True, 200
                        att.bytes_out += len(data)
                        held = []
                elif out:
                    att.bytes_out += len(out)
                    await reply.data(out)
        with _unreadable(p.dialect):
            tracker.finish()
            att.usage, att.finish_reason = tracker.usage, tracker.finish_reason
            if conv is not None:
                tail = conv.close()
                if framer is not None:
                    tail = framer.feed(tail) + framer.close()
            elif att.usage_filter is not None:
                tail = att.usage_filter.flush()
            else:
                tail = b""
        if not att.committed:
            if tracker.error is not None:
                raise UpstreamFailure("stream_error",
                                      f"{tracker.error[0]}: {tracker.error[1]}"[:300], 200)
            held.append(tail)
            data = b"".join(held)
            await reply.start(start, data)
            att.committed = True
            att.bytes_out += len(data)
            tail = b""
        if tail:
            att.bytes_out += len(tail)
            await reply.data(tail)
        await reply.end()
        att.status = 200
        if tracker.error is not None:
            att.outcome, att.error_class = "failed", "stream_error"
            att.error_message = f"{tracker.error[0]}: {tracker.error[1]}"[:300]
        else:
            att.outcome = "ok"

    async def _end_stream_with_error(self, env: RequestEnvelope, att: Attempt,
                                     exc: UpstreamFailure, reply: Reply) -> None:
        """After content reached the client: close the stream with an in-stream error."""
        status = exc.upstream_status if exc.upstream_status >= 400 else 502
        message = (f"upstream {att.candidate.provider.name} failed mid-stream: "
                   f"{att.error_message or exc.message}")
        payload = (att.conv.fail(status, message) if att.conv is not None
                   else stream_error(env.dialect, status, message))
        try:
            await reply.data(payload)
            await reply.end()
        except Exception:
            pass

    async def _count_upstream(self, env: RequestEnvelope, body: RequestBody, att: Attempt,
                              reply: Reply) -> None:
        """A count request for a provider of another dialect that has a count endpoint of its
        own (Anthropic, Gemini): translate, ask it, answer in the client's shape. Any failure
        raises, and the caller answers with the estimate instead."""
        cand = att.candidate
        p = cand.provider
        up_body = translator.count_tokens_request(env.dialect, p.dialect, body.raw,
                                                  doc=body.doc(),
                                                  model=cand.upstream_model)
        url = upstream_url(p, operation="count_tokens", model=cand.upstream_model,
                           stream=False, query="", sse=False)
        limit = min(p.timeouts.first_byte, 30.0)
        timeout = aiohttp.ClientTimeout(total=limit, sock_connect=p.timeouts.connect)
        async with self.http.request("POST", url, data=up_body, timeout=timeout,
                                     headers=upstream_headers(p, env.headers,
                                                              same_dialect=False)) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise UpstreamFailure(f"http_{resp.status}", "count failed", resp.status)
        await self._answer_count(env, att, reply, translator.count_tokens_result(p.dialect, raw),
                                 {})

    async def _estimate_tokens(self, env: RequestEnvelope, body: RequestBody, att: Attempt,
                               reply: Reply) -> None:
        await self._answer_count(env, att, reply,
                                 translator.count_tokens_estimate(env.dialect, body.raw,
                                                                  doc=body.doc()),
                                 {"x-codeswitch-estimate": "true"})

    async def _answer_count(self, env: RequestEnvelope, att: Attempt, reply: Reply,
                            tokens: int, headers: dict[str, str]) -> None:
        doc: dict[str, Any] = ({"totalTokens": tokens} if env.dialect == "gemini"
                               else {"input_tokens": tokens})
        await reply.full(ReplyStart(status=200, provider=att.candidate.provider.name,
                                    headers=headers), _enc.encode(doc))
        att.status, att.outcome, att.committed = 200, "ok", True


@contextlib.contextmanager
def _unreadable(dialect: str) -> Iterator[None]:
    """Upstream bytes our codecs cannot read are the upstream's protocol error (fall back
    before content, in-stream error after), never a crash of the request."""
    try:
        yield
    except UpstreamFailure:
        raise
    except Exception as exc:
        raise UpstreamFailure("protocol", f"unreadable {dialect} stream from upstream "
                              f"({type(exc).__name__}: {str(exc)[:120]})", 502) from exc


async def _reads(resp: aiohttp.ClientResponse, scrub: Scrubber) -> AsyncIterator[bytes]:
    """The upstream's reads, scrubbed (a secret's start at the end of a read waits for the
    next read; what is left at the end of the stream comes last)."""
    async for raw in resp.content.iter_any():
        chunk = scrub.feed(raw)
        if chunk:
            yield chunk
    rest = scrub.flush()
    if rest:
        yield rest


def secret_values(provider: Any, headers: dict[str, str]) -> list[str]:
    """What we authenticate to a provider with: its key and the values of its own headers."""
    found = [resolve_secret(provider.api_key)]
    for name, value in (provider.headers or {}).items():
        found.append(headers.get(name.lower()) or resolve_secret(value))
    auth = headers.get("authorization", "")
    if auth.startswith("Bearer "):
        found.append(auth[7:])
    return [s for s in found if s]


def keep_headers(headers: Any, scrub: Scrubber | None = None) -> dict[str, str]:
    keep = {}
    for name in ("retry-after", "request-id", "x-request-id"):
        value = headers.get(name)
        if value:
            if scrub:
                value = scrub.whole(value.encode("latin-1", "replace")).decode("latin-1")
            keep["retry-after" if name == "retry-after" else "x-upstream-request-id"] = value
    return keep


def _error_text(body: bytes) -> str:
    """The start of an upstream error body, on one line, for the event log."""
    text = body[:300].decode("utf-8", "replace").replace("\n", " ")
    return text or "(empty body)"


