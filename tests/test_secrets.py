"""Issue 10, "nothing leaked": provider keys and client keys never leave the gateway.

Every key is a unique sentinel (``sk-SENTINEL-<24 hex>``). The fake upstreams echo the provider
key they receive (``Behavior(echo_key=True)``) in response headers (``x-echo-api-key`` and inside
the provider's request-id header), in error bodies (400, 401, 503), in stream errors before and
after content, and split across two upstream reads (``split_key``), in every dialect, passed
through and translated. With the body log on, after the traffic the sentinels are searched
for in: the bytes each client received (headers and bodies), ``codeswitch tail --json``,
``codeswitch log --json``, the other CLI outputs, ``/metrics``, every message of every NATS
stream (event log, work queue, KV buckets, object stores), every file under the data
directory (NATS store, DuckDB, logs, body log, outbox, anything), every DuckDB table read with
SQL, and the gateway's own output. A key counts as found when its 24 hex characters, or the
first or last 12 of them, appear.

The whole run is done once per way of giving provider keys: a literal in the config file and
``env:NAME``.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.harness import CLI, ROOT, ChaosFakes, Gateway
from tests.fakes.upstream import Behavior, FakeUpstream, Received

pytestmark = pytest.mark.timeout(240)

DIALECTS = ("anthropic", "openai-chat", "openai-responses", "gemini")
SHORT = {"anthropic": "ant", "openai-chat": "chat", "openai-responses": "resp", "gemini": "gem"}
# (client dialect, provider dialect): the four pass-through lanes and four translated ones
PAIRS = [(d, d) for d in DIALECTS] + [
    ("anthropic", "openai-chat"), ("openai-chat", "anthropic"),
    ("openai-responses", "gemini"), ("gemini", "openai-responses")]

# scenario -> (client streams, the fake's behaviour); the fake finds the name in the prompt
SCENARIOS: dict[str, tuple[bool, Behavior]] = {
    "ok": (False, Behavior(echo_key=True)),
    "ok-stream": (True, Behavior(echo_key=True)),
    "error-400": (False, Behavior(status=400, echo_key=True)),
    "error-401-split": (False, Behavior(status=401, echo_key=True, split_key=True)),
    "error-503": (False, Behavior(status=503, echo_key=True)),
    "stream-error-before-content": (True, Behavior(stream_error_after=0, echo_key=True)),
    "stream-error-after-content": (True, Behavior(stream_error_after=6, chunks=10,
                                                  echo_key=True)),
    "stream-error-after-content-split": (True, Behavior(stream_error_after=6, chunks=10,
                                                        echo_key=True, split_key=True)),
}
# Gemini clients also stream as a JSON array (no alt=sse)
GEMINI_ARRAY = "stream-error-after-content-array"
_TAG = re.compile(rb"secret-scn=([a-z0-9-]+)")


def _sentinel(label: str) -> str:
    return f"sk-SENTINEL-{label}-{secrets.token_hex(12)}"


def _needles(key: str) -> list[str]:
    tail = key.rsplit("-", 1)[1]
    return [tail, tail[:12], tail[-12:]]


def _choose(rec: Received) -> Behavior | None:
    m = _TAG.search(rec.body)
    if m is None:
        return None
    name = m.group(1).decode()
    if name == GEMINI_ARRAY:
        return SCENARIOS["stream-error-after-content"][1]
    return SCENARIOS[name][1]


@dataclass
class Run:
    source: str  # "literal" | "env"
    keys: dict[str, str]  # what -> sentinel key ("provider anthropic", "client")
    surfaces: dict[str, bytes] = field(default_factory=dict)  # where -> bytes
    answers: dict[str, int] = field(default_factory=dict)  # request label -> status
    seen: dict[str, list[Received]] = field(default_factory=dict)  # provider -> requests
    notes: list[str] = field(default_factory=list)

    def leaks(self, prefixes: tuple[str, ...]) -> list[str]:
        """Every (key, surface) where a sentinel shows, with the bytes around it."""
        found = []
        for where, data in self.surfaces.items():
            if not where.startswith(prefixes):
                continue
            for what, key in self.keys.items():
                hits: list[int] = []  # where each occurrence (whole or half) starts
                for needle in _needles(key):
                    at = data.find(needle.encode())
                    while at >= 0:
                        if not any(abs(at - h) < len(key) for h in hits):
                            hits.append(at)
                        at = data.find(needle.encode(), at + 1)
                for at in sorted(hits)[:4]:
                    around = data[max(0, at - 90):at + 40]
                    found.append(f"{what} key in {where}: ...{around!r}...")
        return found


def _config(fakes: dict[str, FakeUpstream], keys: dict[str, str], source: str) -> str:
    def value(what: str, env: str) -> str:
        return f"env:{env}" if source == "env" else keys[what]

    lines = ["[gateway]", "pickup_timeout = 3", "body_log = true",
             f'api_keys = ["{value("client", "CS_SECRET_CLIENT")}"]', ""]
    for d, fake in fakes.items():
        short = SHORT[d]
        lines += ["[[providers]]", f'name = "{short}"', f'dialect = "{d}"',
                  f'base_url = "{fake.base_url}"',
                  f'api_key = "{value(f"provider {d}", f"CS_SECRET_{short.upper()}")}"',
                  f'models = ["{short}-*"]', ""]
    return "\n".join(lines)


def _request(base: str, client: str, provider: str, scenario: str, client_key: str,
             label: str) -> tuple[str, dict[str, str], bytes]:
    stream = scenario == GEMINI_ARRAY or SCENARIOS[scenario][0]
    model = f"{SHORT[provider]}-model-1"
    text = f"{label} secret-scn={scenario}: say something"
    headers = {"content-type": "application/json"}
    if client == "anthropic":
        headers.update({"x-api-key": client_key, "anthropic-version": "2023-06-01"})
        body: dict[str, Any] = {"model": model, "max_tokens": 64, "stream": stream,
                                "messages": [{"role": "user", "content": text}]}
        return f"{base}/v1/messages", headers, json.dumps(body).encode()
    if client in ("openai-chat", "openai-responses"):
        headers["authorization"] = f"Bearer {client_key}"
        if client == "openai-chat":
            body = {"model": model, "stream": stream,
                    "messages": [{"role": "user", "content": text}]}
            return f"{base}/v1/chat/completions", headers, json.dumps(body).encode()
        body = {"model": model, "stream": stream, "input": text}
        return f"{base}/v1/responses", headers, json.dumps(body).encode()
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if not stream:  # Gemini's other way to send the key: ?key=
        return (f"{base}/v1beta/models/{model}:generateContent?key={client_key}", headers,
                json.dumps(body).encode())
    headers["x-goog-api-key"] = client_key
    verb = "streamGenerateContent" + ("" if scenario == GEMINI_ARRAY else "?alt=sse")
    return f"{base}/v1beta/models/{model}:{verb}", headers, json.dumps(body).encode()


async def _send_all(run: Run, base: str) -> None:
    jobs = []
    for client, provider in PAIRS:
        names = list(SCENARIOS) + ([GEMINI_ARRAY] if client == "gemini" else [])
        for scenario in names:
            label = f"{client}>{provider} {scenario}"
            jobs.append((label, _request(base, client, provider, scenario, run.keys["client"],
                                         label)))
    sem = asyncio.Semaphore(4)

    async def one(client: httpx.AsyncClient, label: str,
                  req: tuple[str, dict[str, str], bytes]) -> None:
        url, headers, body = req
        async with sem:
            raw = bytearray()
            try:
                async with client.stream("POST", url, headers=headers, content=body) as resp:
                    raw += f"HTTP {resp.status_code}\n".encode()
                    for name, value in resp.headers.raw:
                        raw += name + b": " + value + b"\n"
                    raw += b"\n"
                    async for chunk in resp.aiter_raw():
                        raw += chunk
                run.answers[label] = resp.status_code
            except httpx.HTTPError as exc:
                raw += f"\n[client error {type(exc).__name__}: {exc}]".encode()
                run.answers[label] = 0
            run.surfaces[f"client {label}"] = bytes(raw)

    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
        await asyncio.gather(*(one(http, label, req) for label, req in jobs))


async def _warm_tail(base: str, client_key: str, out: Path) -> bool:
    """Send plain requests until ``codeswitch tail`` prints one (it only sees live facts)."""
    url, headers, body = _request(base, "anthropic", "anthropic", "ok", client_key, "warm")
    body = body.replace(b"secret-scn=ok", b"warm-up")  # no echo: the fake's default answer
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            await client.post(url, headers=headers, content=body)
            await asyncio.sleep(0.5)
            if out.exists() and out.read_text().strip():
                return True
    return False


async def _nats_messages(url: str) -> dict[str, bytes]:
    """Every message of every stream on the gateway's NATS (event log, work queue, KV
    buckets, object stores), data and headers. ``url`` as ``Gateway.resolved_nats_url`` gives
    it: ``bus.connect`` then uses the gateway's credentials, as the CLI does."""
    from nats.js.errors import BadRequestError, NotFoundError

    from runtime import bus

    out: dict[str, bytes] = {}
    nc = await bus.connect(url, name="test-secrets", max_reconnect_attempts=0,
                           connect_timeout=5)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name, st = info.config.name, info.state
            if not st.messages:
                continue
            for seq in range(max(1, st.first_seq), st.last_seq + 1):
                try:
                    msg = await js.get_msg(str(name), seq)
                except (NotFoundError, BadRequestError):  # deleted (acked work, purged)
                    continue
                head = json.dumps(msg.headers or {}).encode()
                out[f"nats {name} #{seq} {msg.subject}"] = head + b"\n" + (msg.data or b"")
    finally:
        await nc.close()
    return out


def _duckdb_tables(path: Path) -> dict[str, bytes]:
    import duckdb

    out: dict[str, bytes] = {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables "
                                    "WHERE table_schema = 'main'").fetchall():
            rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
            out[f"duckdb table {table}"] = "\n".join(map(repr, rows)).encode()
    finally:
        con.close()
    return out


def _files(root: Path, label: str) -> dict[str, bytes]:
    return {f"{label} {p.relative_to(root)}": p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _exercise(tmp: Path, source: str) -> Run:
    keys = {f"provider {d}": _sentinel(SHORT[d]) for d in DIALECTS}
    keys["client"] = _sentinel("client")
    run = Run(source=source, keys=keys)
    env = {"CS_SECRET_CLIENT": keys["client"],
           **{f"CS_SECRET_{SHORT[d].upper()}": keys[f"provider {d}"] for d in DIALECTS}}
    with ChaosFakes() as fakes:
        for fake in fakes.fakes.values():
            fake.chooser = _choose
        gw = Gateway(tmp, fakes, config_text=_config(fakes.fakes, keys, source),
                     extra_env=env if source == "env" else None)
        gw.start()
        tail_out = tmp / "tail.jsonl"
        with open(tail_out, "wb") as sink:
            tail = subprocess.Popen([*CLI, "tail", "--json", "--attempts", "--home",
                                     str(gw.home)], stdout=sink, stderr=subprocess.STDOUT,
                                    env=gw.env, cwd=ROOT)
        try:
            if not asyncio.run(_warm_tail(gw.url, keys["client"], tail_out)):
                run.notes.append("codeswitch tail printed nothing for the warm-up requests")
            asyncio.run(_send_all(run, gw.url))
            caught, seen = asyncio.run(gw.wait_ledger_caught_up(timeout=30))
            if not caught:
                run.notes.append(f"ledger did not catch up: {seen}")
            for args, home in ((("log", "--json", "--limit", "1000"), True),
                               (("stats", "--json"), True),
                               (("provider", "list", "--json"), True),
                               (("status", "--json"), True),
                               (("body-log", "list", "--json", "--limit", "1000"), False)):
                res = gw.cli(*args, home=home)
                run.surfaces[f"codeswitch {' '.join(args[:2])}"] = \
                    (res.stdout + res.stderr).encode()
            run.surfaces["GET /metrics"] = httpx.get(gw.url + "/metrics", timeout=10).content
            run.surfaces.update(asyncio.run(_nats_messages(gw.resolved_nats_url())))
        finally:
            if tail.poll() is None:
                tail.send_signal(signal.SIGINT)
                try:
                    tail.wait(10)
                except subprocess.TimeoutExpired:
                    tail.kill()
                    tail.wait(5)
            gw.stop()
        run.surfaces["codeswitch tail --json"] = tail_out.read_bytes()
        run.surfaces["gateway output (codeswitch up stdout/stderr)"] = gw.output().encode()
        run.surfaces.update(_files(gw.home, "file"))
        if gw.db_path().exists():
            run.surfaces.update(_duckdb_tables(gw.db_path()))
        else:
            run.notes.append(f"no DuckDB file at {gw.db_path()}")
        run.seen = {d: list(f.requests) for d, f in fakes.fakes.items()}
    return run


@pytest.fixture(scope="module", params=["literal", "env"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    source = str(request.param)
    return _exercise(tmp_path_factory.mktemp(f"secrets-{source}"), source)


def _fail(run: Run, leaks: list[str], where: str) -> str:
    shown = "\n  ".join(leaks[:25]) + (f"\n  ... {len(leaks) - 25} more" if len(leaks) > 25
                                       else "")
    return f"[{run.source} provider keys] {len(leaks)} leaks into {where}:\n  {shown}"


def test_the_fakes_received_and_echoed_every_provider_key(run: Run) -> None:
    """The run means something: each provider got its own sentinel and echoed it."""
    assert not run.notes, run.notes
    expected = sum(len(SCENARIOS) + (1 if c == "gemini" else 0) for c, _ in PAIRS)
    assert len(run.answers) == expected, run.answers
    for d in DIALECTS:
        echoed = [r for r in run.seen[d] if r.behavior is not None and r.behavior.echo_key]
        assert len(echoed) >= len(SCENARIOS), (d, len(echoed))
        assert {r.api_key for r in echoed} == {run.keys[f"provider {d}"]}, d
    # and the clients got what the scenarios say (so the search below sees real answers)
    assert {k: v for k, v in run.answers.items() if k.endswith(" ok")} == \
        {f"{c}>{p} ok": 200 for c, p in PAIRS}
    assert all(run.answers[f"{c}>{p} error-400"] == 400 for c, p in PAIRS), run.answers


def test_search_finds_a_planted_key(run: Run) -> None:
    """The search itself: a key planted in a surface is found (the tests below can fail)."""
    probe = Run(source=run.source, keys=run.keys,
                surfaces={"client x": b"abc " + run.keys["provider gemini"][-12:].encode(),
                          "file y": b"nothing here"})
    assert len(probe.leaks(("client", "file"))) == 1


def test_no_key_in_what_clients_receive(run: Run) -> None:
    """Response headers and bodies, every dialect, passed through and translated."""
    leaks = run.leaks(("client ",))
    assert not leaks, _fail(run, leaks, "client responses")


def test_no_key_in_the_ledger(run: Run) -> None:
    """``codeswitch log --json`` and every DuckDB table (read with SQL: the file itself may
    compress strings)."""
    leaks = run.leaks(("codeswitch log", "duckdb table"))
    assert not leaks, _fail(run, leaks, "the ledger")


def test_no_key_in_the_event_log_or_tail(run: Run) -> None:
    leaks = run.leaks(("codeswitch tail", "nats CS_EVENTS"))
    assert not leaks, _fail(run, leaks, "the event log (CS_EVENTS) and codeswitch tail")


def test_no_key_in_any_nats_stream_kv_or_object_store(run: Run) -> None:
    leaks = run.leaks(("nats ",))
    assert not leaks, _fail(run, leaks, "NATS streams, KV buckets and object stores")


def test_no_key_in_any_file_under_the_data_directory(run: Run) -> None:
    files = [w for w in run.surfaces if w.startswith("file ")]
    assert any("jetstream" in w for w in files) and any("ledger.duckdb" in w for w in files), \
        files
    leaks = run.leaks(("file ",))
    assert not leaks, _fail(run, leaks, f"files under the data directory ({len(files)} files)")


def test_no_key_in_metrics_cli_or_gateway_output(run: Run) -> None:
    leaks = run.leaks(("GET /metrics", "codeswitch stats", "codeswitch provider",
                       "codeswitch status", "codeswitch body-log", "gateway output"))
    assert not leaks, _fail(run, leaks, "/metrics, CLI output and the gateway's own output")


# --------------------------------------------------------------------------- the fake's echo


def _fake_request(fake: FakeUpstream, stream: bool, key: str) -> tuple[str, dict[str, str],
                                                                        dict[str, Any]]:
    d = fake.dialect
    if d == "anthropic":
        return (fake.root_url + "/v1/messages", {"x-api-key": key},
                {"model": "m", "max_tokens": 5, "stream": stream,
                 "messages": [{"role": "user", "content": "hi"}]})
    if d == "openai-chat":
        return (fake.root_url + "/v1/chat/completions", {"authorization": f"Bearer {key}"},
                {"model": "m", "stream": stream, "messages": [{"role": "user",
                                                                "content": "hi"}]})
    if d == "openai-responses":
        return (fake.root_url + "/v1/responses", {"authorization": f"Bearer {key}"},
                {"model": "m", "stream": stream, "input": "hi"})
    verb = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return (f"{fake.root_url}/v1beta/models/m:{verb}", {"x-goog-api-key": key},
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})


@pytest.fixture(params=DIALECTS)
def fake(request: pytest.FixtureRequest) -> Iterator[FakeUpstream]:
    with FakeUpstream(str(request.param)) as f:
        yield f


def test_fake_echoes_the_key_in_headers_errors_and_stream_errors(fake: FakeUpstream) -> None:
    key = _sentinel("probe")
    url, headers, body = _fake_request(fake, False, key)
    fake.push(Behavior(echo_key=True), Behavior(status=401, echo_key=True),
              Behavior(stream_error_after=6, chunks=8, echo_key=True))
    with httpx.Client(timeout=10) as c:
        ok = c.post(url, headers=headers, json=body)
        assert ok.status_code == 200 and ok.headers["x-echo-api-key"] == key
        assert key not in ok.text
        err = c.post(url, headers=headers, json=body)
        assert err.status_code == 401 and key in err.text
        url, headers, body = _fake_request(fake, True, key)
        streamed = c.post(url, headers=headers, json=body)
        before, _, after = streamed.text.partition(key)
        assert after and '" 1"' in before, streamed.text  # content first, then the key
    assert fake.requests[0].api_key == key


def test_fake_splits_the_key_across_two_reads(fake: FakeUpstream) -> None:
    key = _sentinel("split")
    fake.push(Behavior(stream_error_after=3, chunks=8, echo_key=True, split_key=True,
                       split_delay=0.2),
              Behavior(status=503, echo_key=True, split_key=True, split_delay=0.2))

    async def reads() -> list[list[tuple[float, bytes]]]:
        out = []
        async with httpx.AsyncClient(timeout=10) as c:
            for stream in (True, False):
                url, headers, body = _fake_request(fake, stream, key)
                got: list[tuple[float, bytes]] = []
                async with c.stream("POST", url, headers=headers, json=body) as resp:
                    async for chunk in resp.aiter_raw():
                        got.append((time.monotonic(), chunk))
                out.append(got)
        return out

    for got in asyncio.run(reads()):
        whole = b"".join(c for _, c in got)
        assert key.encode() in whole
        assert not any(key.encode() in c for _, c in got), "the key came in one read"
        # the two halves are 0.2 s apart
        at = next(i for i, (_, c) in enumerate(got) if key.encode()[:12] in c)
        assert got[at + 1][0] - got[at][0] >= 0.15


def test_received_api_key_covers_every_way_a_key_is_sent() -> None:
    def rec(headers: dict[str, str], query: dict[str, str] | None = None) -> Received:
        return Received(method="POST", path="/", query=query or {}, headers=headers, body=b"",
                        json=None, received_at=0.0)

    assert rec({"x-api-key": "a"}).api_key == "a"
    assert rec({"authorization": "Bearer b"}).api_key == "b"
    assert rec({"x-goog-api-key": "c"}).api_key == "c"
    assert rec({}, {"key": "d"}).api_key == "d"
    assert rec({}).api_key is None
