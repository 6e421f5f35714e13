"""Is a provider usable, before the first real request: ``codeswitch provider test NAME``,
the check after ``provider add``, the one ``up`` runs after its banner, and ``doctor``.

One cheap call, the provider's model list (``GET`` Anthropic ``/v1/models``, OpenAI
``/models``, Gemini ``/v1beta/models``: free, and it checks the key), then when that list
does not exist a request the provider refuses without running a model (an empty body: 400
means the URL and the key are right). What can be wrong, each named precisely:

    no_key          the key's variable is not set (env:NAME) or there is none
    unreachable     refused, unknown host, TLS, no answer in time
    bad_key         401/403
    bad_base_url    404, or an answer that is not the API's (HTML, no model list)
    model_not_found the model asked for (or one the provider names exactly) is not listed
    error           any other status

Stdlib only (``urllib``), synchronous: the supervisor runs it in a thread without loading an
HTTP client; ``check_all`` checks several providers at once.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from schemas.config import ProviderConfig

__all__ = ["Finding", "check", "check_all", "resolve_key"]

_GLOB = set("*?[")


class Finding(NamedTuple):
    provider: str
    ok: bool
    kind: str  # ok | no_key | unreachable | bad_key | bad_base_url | model_not_found | error
    message: str
    ms: float = 0.0

    def line(self) -> str:
        what = "ok" if self.ok else self.kind.replace("_", " ").upper()
        return f"{self.provider}: {what} — {self.message}"


def resolve_key(p: ProviderConfig, reveal: Callable[[str], str] | None = None,
                environ: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """(the key, None) or (None, why it is missing). ``reveal`` decrypts a stored literal."""
    import os

    value = p.api_key
    if not value:
        return "", None  # a provider without a key (a local server): nothing to check there
    if value.startswith("env:"):
        name = value[4:]
        got = (environ if environ is not None else dict(os.environ)).get(name, "")
        if not got:
            return None, (f"its key is the variable {name}, which is not set here (the "
                          "gateway reads it from the environment `codeswitch up` started in)")
        return got, None
    if reveal is not None:
        try:
            return reveal(value), None
        except Exception as exc:
            return None, f"its stored key cannot be decrypted here: {exc}"
    return value, None


def _request(url: str, headers: dict[str, str], timeout: float, body: bytes | None = None
             ) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(1 << 16) if exc.fp is not None else b""


def _unreachable(exc: BaseException, url: str, timeout: float) -> str:
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    host = urllib.parse.urlsplit(url).netloc
    if isinstance(reason, ConnectionRefusedError):
        return f"connection refused by {host}: nothing listens there (wrong port, or down)"
    if isinstance(reason, socket.gaierror):
        return f"unknown host {host.split(':')[0]!r}: check the base URL"
    if isinstance(reason, ssl.SSLError):
        return f"TLS failed with {host}: {reason}"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer from {host} within {timeout:g} s"
    return f"cannot reach {host}: {reason}"


def _message(body: bytes) -> str:
    """The provider's own words from an error body (the three dialects' shapes)."""
    try:
        doc = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:160] + "…") if len(text) > 160 else text
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])[:200]
    if isinstance(err, str):
        return err[:200]
    return json.dumps(doc)[:160]


def _wanted_models(p: ProviderConfig, model: str | None) -> list[str]:
    if model:
        return [p.upstream_model(model)]
    exact = [m for m in p.models if not _GLOB & set(m)]
    exact += [t for t in p.model_map.values() if not _GLOB & set(t)]
    return list(dict.fromkeys(exact))[:5]


def check(p: ProviderConfig, key: str | None, *, model: str | None = None,
          timeout: float = 8.0, why_no_key: str | None = None) -> Finding:
    """One provider, one (or two) cheap calls: what is wrong, precisely, or ok."""
    from workers.router.model_catalog import parse_model_list
    from workers.router.upstream import models_url, upstream_headers, upstream_url

    started = time.perf_counter()

    def done(ok: bool, kind: str, message: str) -> Finding:
        return Finding(p.name, ok, kind, message, (time.perf_counter() - started) * 1000)

    if key is None:
        return done(False, "no_key", why_no_key or "no key")
    plain = msgspec.structs.replace(p, api_key=key, headers={})
    headers = upstream_headers(plain, {}, same_dialect=False)
    headers.update({k.lower(): v for k, v in p.headers.items() if not v.startswith(("env:",
                                                                                    "enc:"))})
    url = models_url(plain)
    try:
        status, body = _request(url, {k: v for k, v in headers.items()
                                      if k != "content-type"}, timeout)
    except (urllib.error.URLError, OSError) as exc:
        return done(False, "unreachable", _unreachable(exc, url, timeout))
    if status in (401, 403):
        return done(False, "bad_key", f"the provider rejected the key ({status}: "
                                      f"{_message(body)})")
    listed: list[str] | None = None
    if status == 200:
        try:
            listed = parse_model_list(p.dialect, json.loads(body))
        except ValueError:
            listed = []
        if not listed:
            return done(False, "bad_base_url", f"GET {url} answered 200 but not with a model "
                        "list: is the base URL the API's (for example "
                        f"{_EXAMPLE.get(p.dialect, '')})?")
    elif status == 404 or status == 405:
        # no model list there: a request the provider refuses without running a model
        gen = upstream_url(plain, operation="generate", model=model or "codeswitch-check",
                           stream=False)
        try:
            status2, body2 = _request(gen, headers, timeout, body=b"{}")
        except (urllib.error.URLError, OSError) as exc:
            return done(False, "unreachable", _unreachable(exc, gen, timeout))
        if status2 in (401, 403):
            return done(False, "bad_key", f"the provider rejected the key ({status2}: "
                                          f"{_message(body2)})")
        if status2 in (404, 405):
            return done(False, "bad_base_url", f"POST {gen} is {status2} (and GET {url} "
                        f"{status}): the base URL is probably wrong; for {p.dialect} it looks "
                        f"like {_EXAMPLE.get(p.dialect, '')}")
        if status2 >= 500:
            return done(False, "error", f"the provider answered {status2}: {_message(body2)}")
        return done(True, "ok", f"reachable, key accepted (no model list; POST answered "
                                f"{status2})")
    else:
        return done(False, "error", f"GET {url} answered {status}: {_message(body)}")
    assert listed is not None
    wanted = _wanted_models(p, model)
    missing = [m for m in wanted if m not in listed and f"models/{m}" not in listed]
    if missing:
        sample = ", ".join(sorted(listed)[:4])
        return done(False, "model_not_found", f"model {missing[0]!r} is not in its list of "
                    f"{len(listed)} models ({sample}, …)")
    return done(True, "ok", "reachable, " + ("key accepted, " if key else "")
                + f"{len(listed)} model{'s' if len(listed) != 1 else ''} listed"
                + (f" ({', '.join(wanted)} among them)" if wanted else ""))


_EXAMPLE = {"anthropic": "https://api.anthropic.com", "openai-chat": "https://api.openai.com/v1",
            "openai-responses": "https://api.openai.com/v1",
            "gemini": "https://generativelanguage.googleapis.com"}


def check_all(providers: list[ProviderConfig],
              reveal: Callable[[str], str] | None = None, *, timeout: float = 8.0,
              model: str | None = None) -> list[Finding]:
    """Every provider checked at once (threads), in their order."""
    if not providers:
        return []

    def one(p: ProviderConfig) -> Finding:
        key, why = resolve_key(p, reveal)
        return check(p, key, model=model, timeout=timeout, why_no_key=why)

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(providers))) as pool:
        return list(pool.map(one, providers))


def main(argv: list[str] | None = None) -> int:
    """``python -m codeswitch.probe --home H``: what ``codeswitch up`` runs after its banner."""
    import argparse
    import asyncio
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m codeswitch.probe")
    parser.add_argument("--home", required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    home = Path(args.home)
    try:
        from codeswitch.admin import list_providers
        from runtime import bus
        from runtime.home import nats_url_for
        from runtime.secrets import reveal

        async def providers() -> list[ProviderConfig]:
            nc = await bus.connect(nats_url_for(home), name="codeswitch-up-check", once=True)
            try:
                return [p for p in await list_providers(nc) if p.enabled]
            finally:
                await nc.drain()

        for f in check_all(asyncio.run(providers()), lambda v: reveal(v, home),
                           timeout=args.timeout):
            print(f"  check     {f.line()}", flush=True)
    except Exception as exc:  # a check never disturbs the gateway
        print(f"  check     providers not checked: {exc}", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
