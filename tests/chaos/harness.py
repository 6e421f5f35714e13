"""Chaos harness: kill -9 one part of a running ``codeswitch up`` under load and check, request
by request, that nothing was lost, nothing doubled, and every client got an answer.

Shared by the CI tests (``tests/chaos/test_chaos.py``) and the long runs (``bench/chaos.py``).

What it does, per killed part (``run_kill``):

1. ``Gateway`` starts ``codeswitch up`` as a subprocess (own ``--home`` in a temp dir, own port,
   a config with one fake upstream per dialect plus a translated lane, ``pickup_timeout = 3``).
2. ``Load`` sends a mix of streaming and non-streaming requests in all four dialects at a fixed
   concurrency (httpx async). Each request carries a unique ``x-client-request-id`` and the same
   id in its prompt text, so the fake upstreams (``ChaosFakes``) know which client request they
   served and how to answer it (fast, slow stream, slow non-stream). Per request it records what
   the client got: status, the gateway's ``x-codeswitch-request-id``, and whether the answer was
   complete (the dialect's terminal event), a dialect-shaped error (status >= 400 or an error
   event inside the stream), a cut connection, a refused connection, a hang, or garbage.
3. Once some requests completed and streams are in flight, one part is killed with SIGKILL
   (found in the process tree of the supervisor; ``supervisor`` kills ``codeswitch up`` itself,
   whose children get SIGTERM from PR_SET_PDEATHSIG, and the harness then starts
   ``codeswitch up`` again on the same home). The load keeps going until requests succeed
   again (or a deadline), then stops.
4. It waits for the ledger to catch up (``cs.ledger.status`` lag 0 and a stable stream), reads
   the ledger (``codeswitch log --json`` while running, then the DuckDB file read-only after a
   clean stop, which has every column) and compares request by request (``analyze``).

All waits poll with deadlines; failures list the offending client request ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runtime.launch import label_for
from runtime.process import free_port
from tests.fakes.upstream import Behavior, FakeUpstream, Received

__all__ = [
    "CLI",
    "LANES",
    "MODES",
    "PARTS",
    "RETRIED_STATUSES",
    "ChaosFakes",
    "Gateway",
    "Lane",
    "Load",
    "Mode",
    "Outcome",
    "PartReport",
    "SseScanner",
    "analyze",
    "classify",
    "descendants",
    "label_of",
    "rss_kb",
    "run_kill",
]

CLI = [sys.executable, "-m", "codeswitch"]
ROOT = Path(__file__).resolve().parents[2]
# "workers" is the ledger and the alerts, one process
PARTS = ("router", "edge", "workers", "nats-server", "supervisor")
CLIENT_ID_HEADER = "x-client-request-id"
REQUEST_ID_HEADER = "x-codeswitch-request-id"


def retried(status: int | None) -> bool:
    """Statuses the Anthropic and OpenAI SDKs retry on their own (408, 409, 429, 5xx)."""
    return status is not None and (status in (408, 409, 429) or status >= 500)


RETRIED_STATUSES = "408, 409, 429, 5xx"

# --------------------------------------------------------------------------- lanes and modes


@dataclass(frozen=True)
class Lane:
    """A client dialect and the model that routes it to one provider."""

    name: str
    dialect: str  # the client's dialect
    model: str
    provider: str  # the provider (config name) serving the model
    upstream: str  # the fake's dialect


LANES: tuple[Lane, ...] = (
    Lane("anthropic", "anthropic", "claude-sonnet-4-5", "anthropic", "anthropic"),
    Lane("openai-chat", "openai-chat", "gpt-4.1", "chat", "openai-chat"),
    Lane("openai-responses", "openai-responses", "gpt-5", "responses", "openai-responses"),
    Lane("gemini", "gemini", "gemini-2.5-flash", "gemini", "gemini"),
    Lane("anthropic>chat", "anthropic", "xlate-chat-1", "xlate-chat", "openai-chat"),
)


@dataclass(frozen=True)
class Mode:
    name: str
    stream: bool
    behavior: Behavior
    last: str  # the last text delta of the answer: a complete body contains it


def _mode(name: str, stream: bool, chunks: int, **kw: Any) -> Mode:
    return Mode(name, stream, Behavior(chunks=chunks, **kw), f" {chunks - 1}")


MODES: dict[str, Mode] = {m.name: m for m in (
    _mode("stream-slow", True, 14, chunk_delay=0.05),  # ~0.7 s: kills hit it in flight
    _mode("plain-fast", False, 6),
    _mode("stream-fast", True, 6),
    _mode("plain-slow", False, 6, first_byte_delay=0.4),  # in flight at the upstream
)}
# the order requests cycle through (a third are slow streams)
MIX: tuple[str, ...] = ("stream-slow", "plain-fast", "stream-fast", "plain-slow",
                        "stream-slow", "plain-fast")
FAST_MIX: tuple[str, ...] = ("plain-fast", "stream-fast")

_TAG = re.compile(rb"(chaos-[0-9a-f]{8}-\d{6,}) mode=([a-z-]+)")


def chaos_chooser(rec: Received) -> Behavior | None:
    """The fakes' per-request behaviour: the mode named in the prompt text."""
    m = _TAG.search(rec.body)
    if m is None:
        return None
    mode = MODES.get(m.group(2).decode())
    return mode.behavior if mode else None


class ChaosFakes:
    """One fake upstream per dialect, answering per the prompt's mode tag."""

    def __init__(self) -> None:
        self.fakes: dict[str, FakeUpstream] = {}

    def start(self) -> ChaosFakes:
        for d in ("anthropic", "openai-chat", "openai-responses", "gemini"):
            fake = FakeUpstream(d).start()
            fake.chooser = chaos_chooser
            self.fakes[d] = fake
        return self

    def stop(self) -> None:
        for fake in self.fakes.values():
            fake.stop()
        self.fakes.clear()

    def __enter__(self) -> ChaosFakes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear(self) -> None:
        for fake in self.fakes.values():
            fake.clear()

    def seen(self, token: str) -> Counter[str]:
        """How many times the upstreams saw each client request id of run ``token``."""
        counts: Counter[str] = Counter()
        for fake in self.fakes.values():
            for rec in list(fake.requests):
                m = _TAG.search(rec.body)
                if m is not None and token.encode() in m.group(1):
                    counts[m.group(1).decode()] += 1
        return counts


# --------------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state) from /proc/<pid>/stat; None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    return int(fields[1]), fields[0].decode()


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def descendants(root: int) -> list[int]:
    """Live descendants of ``root`` (through ppid: the parts run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] not in ("Z", "X"):
                children.setdefault(st[0], []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def part_label(pid: int) -> str | None:
    """edge | router | workers | gateway | nats-server | supervisor for a gateway process,
    else None (see ``label_of``)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return label_of(raw.replace(b"\0", b" ").decode(errors="replace"))


def _label_of_parts(parts: str) -> str:
    """``edge`` | ``router`` | ``ledger,alerts`` (or ``ledger+alerts``) -> the part's name, as
    the supervisor names it (``runtime.launch.label_for``)."""
    return label_for(parts.replace("+", ",").split(","))


def label_of(cmdline: str) -> str | None:
    """The part a command line belongs to: ``python -m runtime.launch router ...``, the
    process title a part sets for itself (``codeswitch worker router``,
    ``codeswitch worker ledger+alerts``), ``codeswitch up``, or nats-server."""
    words = cmdline.split()
    if not words:
        return None
    if Path(words[0]).name.startswith("nats-server"):
        return "nats-server"
    for i, word in enumerate(words):
        if word == "runtime.launch" and i + 1 < len(words):
            return _label_of_parts(words[i + 1])
        if word == "codeswitch.up":
            return "supervisor"
        if Path(word).name != "codeswitch":
            continue
        rest = words[i + 1:i + 3]
        if rest[:1] == ["edge"]:
            return "edge"
        if rest[:1] in (["worker"], ["gateway"]) and len(rest) > 1:
            return _label_of_parts(rest[1])
        if rest[:1] == ["up"]:
            return "supervisor"
        return None
    return None


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# --------------------------------------------------------------------------- the gateway


def provider_key(dialect: str) -> str:
    return f"sk-chaos-{dialect}-0000"


class Gateway:
    """``codeswitch up`` in a subprocess with one fake upstream per dialect."""

    def __init__(self, workdir: Path, fakes: ChaosFakes, *, grace: float = 3.0,
                 body_log: bool = False, extra_env: dict[str, str] | None = None,
                 config_text: str | None = None, ready_timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grace = grace
        self.ready_timeout = ready_timeout
        self.config = workdir / "codeswitch.toml"
        self.config.write_text(config_text or self.default_config(fakes, body_log))
        self.env = {**os.environ, "CODESWITCH_HOME": str(self.home), "COLUMNS": "250",
                    **{f"CHAOS_KEY_{d.upper().replace('-', '_')}": provider_key(d)
                       for d in fakes.fakes},
                    **(extra_env or {})}
        self.env.pop("CODESWITCH_NATS_URL", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.logs: list[Path] = []
        self.known_pids: set[int] = set()  # every gateway process seen (for cleanup)

    @staticmethod
    def default_config(fakes: ChaosFakes, body_log: bool = False) -> str:
        f = fakes.fakes
        lines = ["[gateway]", "pickup_timeout = 3", f"body_log = {str(body_log).lower()}", ""]
        for name, d, models in (("anthropic", "anthropic", '["claude-*"]'),
                                ("chat", "openai-chat", '["gpt-4*"]'),
                                ("responses", "openai-responses", '["gpt-5*"]'),
                                ("gemini", "gemini", '["gemini-*"]'),
                                ("xlate-chat", "openai-chat", '["xlate-chat-*"]')):
            env = f"CHAOS_KEY_{d.upper().replace('-', '_')}"
            lines += ["[[providers]]", f'name = "{name}"', f'dialect = "{d}"',
                      f'base_url = "{f[d].base_url}"', f'api_key = "env:{env}"',
                      f"models = {models}", ""]
        return "\n".join(lines)

    # -- lifecycle

    def start(self) -> None:
        """Start ``codeswitch up`` (again, on the same home and port) and wait until ready."""
        self.starts += 1
        log = self.workdir / f"up-{self.starts}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [*CLI, "up", "--home", str(self.home), "--config", str(self.config),
                 "--port", str(self.port), "--grace", str(self.grace)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                cwd=ROOT)
        self.known_pids.add(self.proc.pid)
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.kill_all()
            raise

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"codeswitch up exited with {self.proc.returncode}:\n"
                                     + self.output()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                ok = httpx.get(self.url + "/readiness", timeout=1).status_code == 200
                if ok and (self.home / "run.json").exists():
                    self.parts()  # remember the pids
                    return
            time.sleep(0.1)
        raise AssertionError(f"gateway not ready after {timeout:.0f} s:\n"
                             + self.output()[-3000:])

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    @property
    def supervisor_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def run_info(self) -> dict[str, Any]:
        try:
            data = json.loads((self.home / "run.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def nats_url(self) -> str | None:
        url = self.run_info().get("nats_url")
        return str(url) if url else None

    def parts(self) -> dict[str, int]:
        """part -> pid, from the supervisor's process tree (run.json may be stale after a
        restart); the supervisor itself as ``supervisor``."""
        out: dict[str, int] = {}
        root = self.supervisor_pid
        if root is None:
            return out
        out["supervisor"] = root
        tree = sorted(descendants(root))
        for pid in tree:
            label = part_label(pid)
            if label is not None and label not in out:
                out[label] = pid
        # the supervisor's own view (run.json "parts_file", where it writes one), for a part
        # whose process the command line does not name
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError, KeyError):
            listed = json.loads(Path(str(self.run_info()["parts_file"])).read_text())
            for name, entry in dict(listed.get("parts", listed)).items():
                listed_pid = entry.get("pid") if isinstance(entry, dict) else entry
                base = "router" if str(name).startswith("router") else str(name)
                if isinstance(listed_pid, int) and listed_pid in tree and base not in out:
                    out[base] = listed_pid
        self.known_pids.update(out.values())
        return out

    def rss(self) -> dict[str, float]:
        """RSS in MB per part (supervisor included)."""
        out: dict[str, float] = {}
        for label, pid in self.parts().items():
            kb = rss_kb(pid)
            if kb is not None:
                out[label] = kb / 1024
        return out

    def kill(self, part: str) -> int:
        """SIGKILL one part; its pid."""
        pid = self.parts().get(part)
        if pid is None:
            raise AssertionError(f"no {part} process in the gateway's tree: {self.parts()}")
        os.kill(pid, signal.SIGKILL)
        if part == "supervisor" and self.proc is not None:
            self.proc.wait(10)
        return pid

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to ``codeswitch up`` and wait; SIGKILL what is left after ``timeout``."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            tree = descendants(proc.pid)
            self.known_pids.update(tree)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_all()
        return proc.returncode if proc is not None else None

    def kill_all(self) -> list[int]:
        """SIGKILL every gateway process this harness started that is still there (by pid);
        the pids that had to be killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.known_pids.update(descendants(self.proc.pid))
        killed = []
        for pid in sorted(self.known_pids):
            if alive(pid) and part_label(pid) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        return killed

    # -- the CLI and the ledger

    def cli(self, *args: str, timeout: float = 60.0,
            home: bool = True) -> subprocess.CompletedProcess[str]:
        """``codeswitch <args> --home <home>`` (``home=False`` for commands without the flag:
        they find the gateway through $CODESWITCH_HOME)."""
        argv = [*CLI, *args, *(["--home", str(self.home)] if home else [])]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=ROOT)

    async def ask_ledger(self, query: str, params: dict[str, Any],
                         timeout: float = 5.0) -> Any:
        """One ``cs.ledger.<query>`` request, as the CLI sends it."""
        from codeswitch.cli_ledger import ask

        if self.nats_url is None:
            raise RuntimeError("no run.json: gateway not running")
        return await ask(self.resolved_nats_url(), query, params, timeout=timeout)

    def resolved_nats_url(self) -> str:
        """The gateway's NATS as the CLI resolves it from ``--home`` (which also registers the
        credentials named in run.json for this process's connections)."""
        from runtime import home

        url = home.nats_url_for(self.home)
        # nats_url_for registers a URL's credentials once per process; every gateway of a test
        # session has the same URL (port 18122) and its own credentials: register this one's
        use = getattr(home, "use_nats_credentials", None)
        info = self.run_info()
        if use is not None and info.get("nats_url") == url:
            auth, creds = info.get("nats_credentials"), info.get("nats_creds")
            use(url, auth_file=auth if isinstance(auth, str) else None,
                creds_file=creds if isinstance(creds, str) else None)
        return url

    async def wait_ledger_caught_up(self, timeout: float = 30.0,
                                    stable_s: float = 1.5) -> tuple[bool, str]:
        """Poll the ledger until its lag is 0 and the event stream has not grown for
        ``stable_s``; (caught up, what was last seen)."""
        deadline = time.monotonic() + timeout
        last_seq, since, seen = -1, time.monotonic(), "no answer"
        while time.monotonic() < deadline:
            try:
                st = await self.ask_ledger("status", {}, timeout=2.0)
                seq = int(st["stream"]["last_seq"])
                lag = int(st["lag"])
                seen = f"lag {lag}, stream last_seq {seq}, ledger last_seq " \
                       f"{st['state'].get('last_seq')}"
                if seq != last_seq:
                    last_seq, since = seq, time.monotonic()
                elif lag == 0 and time.monotonic() - since >= stable_s:
                    return True, seen
            except Exception as exc:
                seen = f"ledger not answering ({type(exc).__name__}: {exc})"
            await asyncio.sleep(0.25)
        return False, seen

    async def ledger_rows_live(self, expected: int) -> list[dict[str, Any]]:
        """The ledger's request rows while it runs: ``codeswitch log --json`` (newest 1,000),
        then pages of the same query for more."""
        res = await asyncio.to_thread(self.cli, "log", "--json", "--limit", "1000")
        if res.returncode != 0:
            raise RuntimeError(f"codeswitch log failed ({res.returncode}): "
                               f"{(res.stderr or res.stdout)[-500:]}")
        rows: list[dict[str, Any]] = json.loads(res.stdout)
        while len(rows) >= 1000 and len(rows) < expected * 3 + 1000:
            before = min(int(r["seq"]) for r in rows)
            page = await self.ask_ledger("log", {"limit": 1000, "before_seq": before},
                                         timeout=30)
            if not page:
                break
            rows.extend(page)
        return rows

    def db_path(self) -> Path:
        from workers.ledger.service import db_path

        return db_path(self.home)

    def ledger_rows_file(self) -> list[dict[str, Any]]:
        """Every ``requests`` row, every column, from the DuckDB file (read-only; call after
        the gateway stopped: the ledger service holds the file while it runs)."""
        import duckdb

        con = duckdb.connect(str(self.db_path()), read_only=True)
        try:
            cur = con.execute("SELECT * FROM requests ORDER BY seq")
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        finally:
            con.close()


# --------------------------------------------------------------------------- requests


def build_request(lane: Lane, mode: Mode, cid: str, base: str) -> tuple[str, dict[str, str],
                                                                         bytes]:
    """(url, headers, body) of one client request in the lane's dialect."""
    text = f"{cid} mode={mode.name}: count for me"
    headers = {CLIENT_ID_HEADER: cid, "content-type": "application/json"}
    d = lane.dialect
    if d == "anthropic":
        headers.update({"x-api-key": "chaos-client", "anthropic-version": "2023-06-01"})
        body: dict[str, Any] = {"model": lane.model, "max_tokens": 64, "stream": mode.stream,
                                "messages": [{"role": "user", "content": text}]}
        url = f"{base}/v1/messages"
    elif d == "openai-chat":
        headers["authorization"] = "Bearer chaos-client"
        body = {"model": lane.model, "stream": mode.stream,
                "messages": [{"role": "user", "content": text}]}
        url = f"{base}/v1/chat/completions"
    elif d == "openai-responses":
        headers["authorization"] = "Bearer chaos-client"
        body = {"model": lane.model, "stream": mode.stream, "input": text}
        url = f"{base}/v1/responses"
    else:
        headers["x-goog-api-key"] = "chaos-client"
        body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
        verb = "streamGenerateContent?alt=sse" if mode.stream else "generateContent"
        url = f"{base}/v1beta/models/{lane.model}:{verb}"
    return url, headers, json.dumps(body).encode()


class SseScanner:
    """Incremental SSE parser: feed bytes, get (event name, data) of each complete event."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        self._buf += chunk.replace(b"\r\n", b"\n")
        out: list[tuple[str | None, str]] = []
        while b"\n\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n\n", 1)
            name: str | None = None
            data: list[str] = []
            for line in raw.decode("utf-8", "replace").split("\n"):
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
            if name is not None or data:
                out.append((name, "\n".join(data)))
        return out


def _json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def stream_event_kind(dialect: str, name: str | None, data: str) -> str | None:
    """"terminal", "error" or None for one SSE event of a client dialect."""
    if dialect == "openai-chat" and data.strip() == "[DONE]":
        return "terminal"
    doc = _json(data)
    if not isinstance(doc, dict):
        return None
    kind = doc.get("type")
    if dialect == "anthropic":
        if name == "error" or kind == "error":
            return "error"
        return "terminal" if kind == "message_stop" else None
    if dialect == "openai-responses":
        if name in ("error", "response.failed") or kind in ("error", "response.failed"):
            return "error"
        return "terminal" if kind == "response.completed" else None
    if "error" in doc:
        return "error"
    if dialect == "gemini":
        for cand in doc.get("candidates") or []:
            if isinstance(cand, dict) and cand.get("finishReason"):
                return "terminal"
    return None


def error_shaped(dialect: str, body: bytes) -> bool:
    """A non-streaming error body in the client's dialect."""
    doc = _json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), dict):
        return False
    err = doc["error"]
    if not isinstance(err.get("message"), str):
        return False
    if dialect == "anthropic":
        return doc.get("type") == "error" and isinstance(err.get("type"), str)
    if dialect == "gemini":
        return isinstance(err.get("code"), int) and isinstance(err.get("status"), str)
    return "type" in err


def success_shaped(dialect: str, body: bytes) -> bool:
    doc = _json(body)
    if not isinstance(doc, dict):
        return False
    if dialect == "anthropic":
        return doc.get("type") == "message" and bool(doc.get("content"))
    if dialect == "openai-chat":
        return bool(doc.get("choices"))
    if dialect == "openai-responses":
        return doc.get("status") == "completed"
    return any(isinstance(c, dict) and c.get("finishReason")
               for c in doc.get("candidates") or [])


def classify(dialect: str, stream: bool, status: int, body: bytes,
             last: str) -> tuple[str, str]:
    """(kind, detail) of an answer received in full: complete | dialect_error | stream_error |
    truncated | garbage."""
    if status == 200 and stream:
        scanner = SseScanner()
        kinds = [stream_event_kind(dialect, n, d) for n, d in scanner.feed(body + b"\n\n")]
        if "error" in kinds:
            return "stream_error", "error event after HTTP 200"
        if "terminal" in kinds:
            if last.encode() in body:
                return "complete", ""
            return "garbage", "terminal event but content missing"
        return "truncated", f"stream ended without terminal event ({len(body)} bytes)"
    if status == 200:
        if success_shaped(dialect, body):
            if last.encode() in body:
                return "complete", ""
            return "garbage", "answer without the expected content"
        return "garbage", f"200 but not a {dialect} answer: {body[:120]!r}"
    if error_shaped(dialect, body):
        return "dialect_error", f"{status} {dialect} error"
    return "garbage", f"{status} not a {dialect} error body: {body[:120]!r}"


@dataclass
class Outcome:
    """What one client request got."""

    index: int
    cid: str
    lane: str
    dialect: str
    mode: str
    stream: bool
    t_start: float  # time.monotonic()
    t_headers: float | None = None
    t_first_body: float | None = None
    t_error_event: float | None = None  # when an in-stream error event arrived
    t_end: float | None = None
    status: int | None = None
    request_id: str | None = None
    kind: str = "pending"  # complete | dialect_error | stream_error | cut | refused | hang |
    #                        truncated | garbage
    detail: str = ""
    sample: bytes = b""

    @property
    def complete(self) -> bool:
        return self.kind == "complete"

    def brief(self) -> str:
        rid = f" rid={self.request_id}" if self.request_id else ""
        return (f"{self.cid} [{self.lane} {self.mode}] {self.kind} status={self.status}{rid}"
                + (f" ({self.detail})" if self.detail else ""))


class Load:
    """Closed-loop load: ``concurrency`` workers each send their next request when the last
    one finished, cycling through the lanes and the mode mix, until ``stop()`` or ``limit``."""

    def __init__(self, base_url: str, token: str, *, concurrency: int = 8,
                 lanes: Sequence[Lane] = LANES, mix: Sequence[str] = MIX,
                 read_timeout: float = 20.0, total_timeout: float = 60.0,
                 keep: bool = True, limit: int | None = None) -> None:
        self.base_url = base_url
        self.token = token
        self.concurrency = concurrency
        self.lanes = list(lanes)
        self.mix = list(mix)
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.keep = keep  # keep every Outcome (False: only the counters, for long runs)
        self.limit = limit
        self.outcomes: list[Outcome] = []
        self.in_flight: dict[str, Outcome] = {}
        self.kinds: Counter[str] = Counter()
        self.sent = 0
        self.done = 0
        self.on_done: Callable[[Outcome], None] | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def cid(self, index: int) -> str:
        return f"chaos-{self.token}-{index:06d}"

    def streams_mid_flight(self) -> list[Outcome]:
        """Streams that received body bytes and have not ended."""
        return [o for o in self.in_flight.values() if o.stream and o.t_first_body is not None]

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency * 2,
                              max_keepalive_connections=self.concurrency)
        timeout = httpx.Timeout(connect=5.0, read=self.read_timeout, write=10.0, pool=10.0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set() and (self.limit is None or self.sent < self.limit):
            index = self.sent
            self.sent += 1
            o = await self.one(client, index)
            self.done += 1
            self.kinds[o.kind] += 1
            if self.keep:
                self.outcomes.append(o)
            if self.on_done is not None:
                self.on_done(o)
            if o.kind == "refused":
                await asyncio.sleep(0.25)  # the edge is down: do not spin through the budget

    async def one(self, client: httpx.AsyncClient, index: int) -> Outcome:
        lane = self.lanes[index % len(self.lanes)]
        mode = MODES[self.mix[(index // len(self.lanes)) % len(self.mix)]]
        cid = self.cid(index)
        url, headers, body = build_request(lane, mode, cid, self.base_url)
        o = Outcome(index=index, cid=cid, lane=lane.name, dialect=lane.dialect, mode=mode.name,
                    stream=mode.stream, t_start=time.monotonic())
        self.in_flight[cid] = o
        buf = bytearray()
        try:
            async with asyncio.timeout(self.total_timeout):
                async with client.stream("POST", url, headers=headers, content=body) as resp:
                    o.t_headers = time.monotonic()
                    o.status = resp.status_code
                    o.request_id = resp.headers.get(REQUEST_ID_HEADER)
                    scanner = SseScanner() if mode.stream and resp.status_code == 200 else None
                    async for chunk in resp.aiter_raw():
                        now = time.monotonic()
                        if o.t_first_body is None and chunk:
                            o.t_first_body = now
                        buf += chunk
                        if scanner is not None and o.t_error_event is None:
                            for name, data in scanner.feed(chunk):
                                if stream_event_kind(lane.dialect, name, data) == "error":
                                    o.t_error_event = now
                                    break
            o.kind, o.detail = classify(lane.dialect, mode.stream, o.status, bytes(buf),
                                        mode.last)
        except httpx.ConnectError as exc:
            o.kind, o.detail = "refused", f"{type(exc).__name__}: {exc}"[:200]
        except (httpx.TimeoutException, TimeoutError) as exc:
            o.kind, o.detail = "hang", f"{type(exc).__name__} after {len(buf)} bytes"
        except httpx.HTTPError as exc:
            o.kind = "cut"
            o.detail = f"{type(exc).__name__}: {exc}"[:200] + f" after {len(buf)} bytes"
        finally:
            o.t_end = time.monotonic()
            self.in_flight.pop(cid, None)
            if o.kind != "complete":
                o.sample = bytes(buf[:600])
        return o


# --------------------------------------------------------------------------- the verdict


@dataclass
class PartReport:
    """What killing one part did. Lists hold ``Outcome.brief()`` lines (offenders)."""

    part: str
    sent: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    complete: int = 0
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    upstream_doubled: list[str] = field(default_factory=list)
    undelivered: int = 0
    marked: int = 0
    unmarked: list[str] = field(default_factory=list)
    unaccounted: int = 0  # undelivered, never reached an upstream, no row: nothing to record
    bad_answers: list[str] = field(default_factory=list)  # neither complete nor dialect error
    excused_cuts: int = 0  # connection errors while the edge was down
    retried_after_upstream: list[str] = field(default_factory=list)
    router_streams: list[str] = field(default_factory=list)  # streams mid-flight at the kill
    router_stream_late: list[str] = field(default_factory=list)  # no error event within 2 s
    router_stream_delays: list[float] = field(default_factory=list)
    mismarked: list[str] = field(default_factory=list)  # complete, but the ledger says error
    orphan_rows: int = 0  # ledger rows no client request could be tied to
    killed_pid: int | None = None
    restarted: bool = False
    restart_s: float | None = None  # kill -> new process of the part
    back_s: float | None = None  # kill -> /readiness 200 again after the restart
    recovery_s: float | None = None  # kill -> requests succeed again
    rss_before: dict[str, float] = field(default_factory=dict)
    rss_after: dict[str, float] = field(default_factory=dict)
    ledger_source: str = ""
    ledger_rows: int = 0
    ledger_caught_up: str = ""
    ledger_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def unmarked_count(self) -> int:
        return len(self.unmarked)

    def summary(self) -> str:
        def fmt(v: float | None) -> str:
            return "never" if v is None else f"{v:.2f}s"

        return (f"[{self.part}] sent {self.sent}, complete {self.complete}, lost "
                f"{len(self.lost)}, doubled {len(self.doubled)} (upstream "
                f"{len(self.upstream_doubled)}), undelivered {self.undelivered} (marked "
                f"{self.marked}, unmarked {len(self.unmarked)}, unaccounted "
                f"{self.unaccounted}), bad answers {len(self.bad_answers)}, excused cuts "
                f"{self.excused_cuts}, retryable status after upstream "
                f"{len(self.retried_after_upstream)}, router-lost streams "
                f"{len(self.router_streams)} (late {len(self.router_stream_late)}), restart "
                f"{fmt(self.restart_s)}, back {fmt(self.back_s)}, recovery "
                f"{fmt(self.recovery_s)}, kinds {self.kinds}, statuses {self.statuses}, "
                f"ledger {self.ledger_rows} rows via {self.ledger_source} "
                f"({self.ledger_caught_up})")

    def render(self, limit: int = 12) -> str:
        lines = [self.summary()]
        for title, items in (("lost", self.lost), ("doubled", self.doubled),
                             ("upstream doubled", self.upstream_doubled),
                             ("unmarked", self.unmarked), ("bad answers", self.bad_answers),
                             ("retryable status after upstream", self.retried_after_upstream),
                             ("router-lost streams without error event in 2 s",
                              self.router_stream_late),
                             ("complete but ledger says error", self.mismarked),
                             ("notes", self.notes)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {x}" for x in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... {len(items) - limit} more")
        rss = ", ".join(f"{k} {self.rss_before.get(k, 0):.0f}->{self.rss_after.get(k, 0):.0f}"
                        for k in sorted(set(self.rss_before) | set(self.rss_after)))
        lines.append(f"  RSS MB before->after: {rss}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class KillTimes:
    t_kill: float
    part: str
    killed_pid: int
    t_restarted: float | None = None
    t_back: float | None = None  # readiness 200 after the restart


def _row_ok(row: dict[str, Any]) -> bool:
    return bool(row.get("ok"))


def analyze(part: str, outcomes: Sequence[Outcome], rows: Iterable[dict[str, Any]],
            upstream_seen: Counter[str], kill: KillTimes | None, *,
            stream_error_within: float = 2.0) -> PartReport:
    """Compare what the clients got with the ledger rows, request by request."""
    rows = list(rows)
    rep = PartReport(part=part, sent=len(outcomes))
    rep.kinds = dict(Counter(o.kind for o in outcomes))
    rep.statuses = dict(Counter(str(o.status) for o in outcomes))
    rep.ledger_rows = len(rows)
    columns = sorted({k for r in rows for k in r})
    rep.ledger_columns = columns
    has_cid = "client_request_id" in columns
    has_delivered = "delivered" in columns
    if rows and not has_cid:
        rep.notes.append("ledger rows have no client_request_id column: requests whose "
                         "connection died before headers cannot be matched")
    if rows and not has_delivered:
        rep.notes.append("ledger rows have no delivered column: undelivered is judged by ok")
    by_cid: dict[str, list[dict[str, Any]]] = {}
    by_rid: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if has_cid and r.get("client_request_id"):
            by_cid.setdefault(str(r["client_request_id"]), []).append(r)
        by_rid.setdefault(str(r["request_id"]), []).append(r)
    used: set[int] = set()

    edge_down = part in ("edge", "supervisor")
    window_end = (kill.t_back + 0.5) if kill and kill.t_back else float("inf")

    last_failure_start = None
    for o in outcomes:
        rid_rows = by_rid.get(o.request_id, []) if o.request_id else []
        cid_rows = by_cid.get(o.cid, [])
        mine: dict[int, dict[str, Any]] = {id(r): r for r in (*cid_rows, *rid_rows)}
        used.update(mine)
        matched = list(mine.values())
        seen = upstream_seen.get(o.cid, 0)
        if seen > 1:
            rep.upstream_doubled.append(f"{o.brief()} seen {seen}x by the upstream")
        ids = Counter(str(r["request_id"]) for r in matched)
        if len(matched) > 1:
            rep.doubled.append(f"{o.brief()}: {len(matched)} ledger rows "
                               f"(request ids {dict(ids)})")
        if o.complete:
            rep.complete += 1
            if not matched:
                rep.lost.append(o.brief())
            elif not all(_row_ok(r) for r in matched) or \
                    (has_delivered and not all(r.get("delivered") for r in matched)):
                rep.mismarked.append(o.brief())
        else:
            if kill is not None and o.t_start >= kill.t_kill - 0.05:
                last_failure_start = max(last_failure_start or 0.0, o.t_start)
            rep.undelivered += 1
            must_be_known = seen > 0 or o.request_id is not None
            if not matched:
                if must_be_known:
                    why = "upstream saw it" if seen else "client got headers"
                    rep.unmarked.append(f"{o.brief()}: no ledger row ({why})")
                else:
                    rep.unaccounted += 1
            else:
                cut = o.kind not in ("dialect_error", "stream_error")
                bad = [r for r in matched if _row_ok(r)
                       or (cut and has_delivered and r.get("delivered") is not False)]
                if bad:
                    r = bad[0]
                    rep.unmarked.append(
                        f"{o.brief()}: ledger row ok={r.get('ok')} status={r.get('status')} "
                        f"delivered={r.get('delivered', '(no column)')} "
                        f"error_class={r.get('error_class')}")
                else:
                    rep.marked += 1
        # neither a complete answer nor a dialect-shaped error
        if o.kind in ("cut", "refused"):
            if edge_down and kill is not None and \
                    kill.t_kill - 0.05 <= (o.t_end or 0.0) <= window_end:
                rep.excused_cuts += 1
            else:
                rep.bad_answers.append(o.brief())
        elif o.kind in ("hang", "truncated", "garbage"):
            rep.bad_answers.append(o.brief() + (f" body {o.sample[:160]!r}" if o.sample else ""))
        if seen and retried(o.status):
            rep.retried_after_upstream.append(
                f"{o.brief()}: upstream saw it, client got {o.status} (SDKs retry it)")
        # streams whose router died: an error event within 2 s of the kill
        if part == "router" and kill is not None and o.stream and o.t_headers is not None \
                and o.t_headers < kill.t_kill and (o.t_end or 0) > kill.t_kill \
                and not o.complete:
            rep.router_streams.append(o.brief())
            if o.t_error_event is not None:
                delay = o.t_error_event - kill.t_kill
                rep.router_stream_delays.append(delay)
                if delay > stream_error_within:
                    rep.router_stream_late.append(f"{o.brief()}: error event {delay:.2f}s "
                                                  "after the kill")
            else:
                end = (o.t_end or kill.t_kill) - kill.t_kill
                rep.router_stream_late.append(f"{o.brief()}: no error event (ended "
                                              f"{end:.2f}s after the kill as {o.kind})")
    # several rows for one id, even where no client outcome points at them
    for key, groups in (("request_id", by_rid), ("client_request_id", by_cid)):
        for ident, group in groups.items():
            if len(group) > 1 and not any(ident in d for d in rep.doubled):
                rep.doubled.append(f"{key} {ident}: {len(group)} ledger rows")
    rep.orphan_rows = sum(1 for r in rows if id(r) not in used)
    if kill is not None:
        rep.killed_pid = kill.killed_pid
        rep.restarted = kill.t_restarted is not None
        rep.restart_s = None if kill.t_restarted is None else kill.t_restarted - kill.t_kill
        rep.back_s = None if kill.t_back is None else kill.t_back - kill.t_kill
        after = [o for o in outcomes if o.complete and o.t_start >= kill.t_kill
                 and (last_failure_start is None or o.t_start > last_failure_start)]
        if after:
            rep.recovery_s = min(o.t_end or 0.0 for o in after) - kill.t_kill
    return rep


# --------------------------------------------------------------------------- one scenario


async def _watch_recovery(gw: Gateway, kill: KillTimes, stop: asyncio.Event) -> None:
    """Poll for the part's new process and for /readiness 200 after it."""
    async with httpx.AsyncClient(timeout=1.0) as client:
        while not stop.is_set():
            now = time.monotonic()
            if kill.t_restarted is None and kill.part != "supervisor":
                pid = gw.parts().get(kill.part)
                if pid is not None and pid != kill.killed_pid:
                    kill.t_restarted = now
            if kill.t_restarted is not None and kill.t_back is None:
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(gw.url + "/readiness")
                    if r.status_code == 200:
                        kill.t_back = time.monotonic()
            if kill.t_back is not None:
                return
            await asyncio.sleep(0.05)


async def _restart_supervisor(gw: Gateway, kill: KillTimes, old: list[int],
                              orphan_deadline: float, notes: list[str]) -> None:
    """After kill -9 of ``codeswitch up``: wait for its children to exit (SIGTERM from
    PR_SET_PDEATHSIG), then start ``codeswitch up`` again on the same home."""
    deadline = time.monotonic() + orphan_deadline
    while time.monotonic() < deadline and any(alive(p) for p in old):
        await asyncio.sleep(0.1)
    left = [p for p in old if alive(p)]
    if left:
        notes.append(f"parts still running {orphan_deadline:.0f}s after the supervisor was "
                     f"killed (killed now): {[(p, part_label(p)) for p in left]}")
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    await asyncio.to_thread(gw.start)
    kill.t_restarted = time.monotonic()


async def run_kill(workdir: Path, fakes: ChaosFakes, part: str, *, requests: int = 200,
                   concurrency: int = 8, kill_after: float = 0.3, min_streams: int = 2,
                   recover_within: float = 30.0, post_ok: int = 16,
                   catch_up_within: float = 30.0,
                   grace: float = 3.0, log: Callable[[str], None] | None = None) -> PartReport:
    """Start a gateway, load it, kill -9 ``part`` (or none: ``part="none"``), keep the load
    going until it recovers (``post_ok`` complete answers sent after the last failure, the
    part back, at most ``recover_within`` s), let the ledger catch up (``catch_up_within`` s;
    8 s when the gateway never came back), stop, and compare (``analyze``)."""
    say = log or (lambda s: None)
    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    gw = Gateway(workdir, fakes, grace=grace)
    await asyncio.to_thread(gw.start)
    notes: list[str] = []
    kill: KillTimes | None = None
    rows: list[dict[str, Any]] = []
    try:
        rss_before = gw.rss()
        load = Load(gw.url, token, concurrency=concurrency)
        loader = asyncio.create_task(load.run())
        # 1. warm: some requests done and streams mid-flight
        deadline = time.monotonic() + 30
        while load.done < requests * kill_after and time.monotonic() < deadline \
                and not loader.done():
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 10
        while part != "none" and len(load.streams_mid_flight()) < min_streams \
                and time.monotonic() < deadline and not loader.done():
            await asyncio.sleep(0.005)
        if loader.done():
            await loader  # raises what stopped it
        # 2. kill
        stop_watch = asyncio.Event()
        helpers: list[asyncio.Task[None]] = []
        if part != "none":
            mid = len(load.streams_mid_flight())
            old_tree = descendants(gw.proc.pid) if gw.proc else []
            pid = gw.kill(part)
            kill = KillTimes(time.monotonic(), part, pid)
            say(f"killed {part} (pid {pid}) after {load.done} requests, {mid} streams "
                "mid-flight")
            if mid < min_streams:
                notes.append(f"only {mid} streams were mid-flight at the kill")
            if part == "supervisor":
                helpers.append(asyncio.create_task(_restart_supervisor(
                    gw, kill, old_tree, orphan_deadline=grace + 15, notes=notes)))
            helpers.append(asyncio.create_task(_watch_recovery(gw, kill, stop_watch)))
        # 3. keep going until requests succeed again (and the budget is spent): post_ok
        # complete answers to requests sent after the last request that failed
        ok_starts: list[float] = []
        last_fail = 0.0

        def track(o: Outcome) -> None:
            nonlocal last_fail
            if kill is None or o.t_start < kill.t_kill:
                return
            if o.complete:
                ok_starts.append(o.t_start)
            else:
                last_fail = max(last_fail, o.t_start)

        def ok_after() -> int:
            return sum(1 for t in ok_starts if t > last_fail)

        load.on_done = track
        deadline = time.monotonic() + recover_within
        while not loader.done():
            recovered = kill is None or (ok_after() >= post_ok and kill.t_back is not None)
            if load.sent >= requests and recovered:
                break
            if time.monotonic() > deadline and load.sent >= requests:
                notes.append(f"not recovered {recover_within:.0f}s after the kill "
                             f"(successes since the last failure: {ok_after()})")
                break
            await asyncio.sleep(0.05)
        load.stop()
        await loader
        stop_watch.set()
        for task in helpers:
            try:
                await asyncio.wait_for(task, 60)
            except Exception as exc:
                notes.append(f"recovery helper failed: {type(exc).__name__}: {exc}"[:300])
        say(f"load done: {load.done} requests, {dict(load.kinds)}")
        # 4. the ledger catches up; read it while it runs, then from its file
        back = kill is None or kill.t_back is not None
        caught, seen = await gw.wait_ledger_caught_up(timeout=catch_up_within if back else 8)
        caught_text = ("caught up: " if caught else "NOT caught up: ") + seen
        rss_after = gw.rss()
        source = ""
        try:
            rows = await gw.ledger_rows_live(load.done)
            source = "codeswitch log --json"
        except Exception as exc:
            notes.append(f"ledger not readable while running: {exc}"[:300])
    finally:
        gw.stop()
    with contextlib.suppress(Exception):
        file_rows = gw.ledger_rows_file()
        if len(file_rows) >= len(rows):
            rows, source = file_rows, "DuckDB file (read-only, after stop)"
    report = analyze(part, load.outcomes, rows, fakes.seen(token), kill)
    report.rss_before, report.rss_after = rss_before, rss_after
    report.ledger_source, report.ledger_caught_up = source, caught_text
    report.notes += notes
    report.duration_s = time.monotonic() - t0
    fakes.clear()
    return report
