#!/usr/bin/env python3
"""Real Claude Code CLI against the codeswitch gateway, end to end (a by-hand check, not CI).

    .venv/bin/python bench/real_clients/claude_code.py             # every scenario
    .venv/bin/python bench/real_clients/claude_code.py tool- error-  # names containing ...

What it does: installs `@anthropic-ai/claude-code` with npm into $CC_DIR (default
/tmp/realcli/claude) if missing; starts scripted fake providers (tests/fakes/upstream.py) of all
four dialects in this process (fa=anthropic prio 1, fc=openai-chat prio 2,
fr=openai-responses prio 3, fg=gemini prio 4); its own nats-server on a free port and
`codeswitch up --nats-url ...` on CC_PORT (default 18200, or the next port that binds in
18200-18299); a logging pass-through proxy in front of the gateway (records what Claude Code
sends: HEAD /, /v1/messages?beta=true, ...). Claude Code runs with a temp HOME,
ANTHROPIC_BASE_URL=<proxy>, ANTHROPIC_AUTH_TOKEN, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1,
DISABLE_TELEMETRY=1, DISABLE_AUTOUPDATER=1, DISABLE_ERROR_REPORTING=1; a provider is pinned per
scenario with ANTHROPIC_CUSTOM_HEADERS="x-codeswitch-provider: <name>". Prints PASS/FAIL per
scenario, stops everything it started, removes the temp dir (CC_KEEP=1 keeps it).

Scenarios, for each provider p in fa fc fr fg:
  text-p     `claude -p` plain answer ("PONG from p")
  stream-p   --output-format stream-json --verbose: init, assistant text, result success
  tool-p     Bash round trip: the fake asks for `echo CS_TOOL_MARKER_$((6*7))`, Claude Code
             runs it and sends the tool_result back; the final text carries CS_TOOL_MARKER_42
  read-p     Read tool on a PNG: the image in the tool_result reaches the provider
and: haiku-fg (--model haiku through Gemini), fallback-503 / fallback-429 / fallback-instream
(fa fails before content, fc answers invisibly), error-429 / error-503-fc / error-400 (pinned,
no fallback; CLAUDE_CODE_MAX_RETRIES=1 to keep it short: by default Claude Code retries 10
times over ~3 minutes), midstream-error (error event after content: Claude Code retries
without streaming), count-tokens (Claude Code's own body through each dialect), models,
reasoning-chat (DeepSeek-style reasoning_content + tool call: must come back as
reasoning_content on the next turn; fails without /tmp/patches/claude.diff),
lost-424 (the router that took the request is SIGKILLed while fa holds the call: the gateway's
424 + x-should-retry: false; Claude Code must show it and not send it again), final-503 (the
router SIGSTOPped: the gateway's own retryable 503 "no router available" to every attempt;
Claude Code's default retries, ~4 minutes). The faults: bench/real_clients/_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(os.environ.get("CC_REPO", str(Path(__file__).resolve().parents[2])))
sys.path.insert(0, str(REPO))

import _faults as faults  # noqa: E402  (bench/real_clients/_faults.py)
import aiohttp  # noqa: E402
import msgspec  # noqa: E402
from aiohttp import web  # noqa: E402

from tests.fakes import upstream as fu  # noqa: E402
from tests.fakes.upstream import Behavior  # noqa: E402

MAIN = REPO
VENV = Path(sys.executable).parent
CLI_PREFIX = Path(os.environ.get("CC_DIR", "/tmp/realcli/claude"))
CLAUDE = CLI_PREFIX / "node_modules" / ".bin" / "claude"

# ------------------------------------------------------------------ scripted fake provider

TOOL_COMMAND = "echo CS_TOOL_MARKER_$((6*7))"
TOOL_OUTPUT = "CS_TOOL_MARKER_42"
FILE_MARKER = "CS_FILE_MARKER_77"
PNG_B64_PREFIX = "iVBORw0KGgo"
GEMINI_SIG = "c2lnLUNTLXNjcmlwdGVk"  # base64("sig-CS-scripted")


class ScriptBehavior(fu.Behavior):
    tools: list[dict[str, Any]] = []


def _tool_names(dialect: str, body: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for t in body.get("tools") or []:
        if not isinstance(t, dict):
            continue
        if dialect == "gemini":
            for fd in t.get("functionDeclarations") or t.get("function_declarations") or []:
                names.add(fd.get("name", ""))
        elif dialect == "openai-chat":
            names.add((t.get("function") or {}).get("name", ""))
        else:
            names.add(t.get("name", ""))
    return names


class ScriptedFake(fu.FakeUpstream):
    def __init__(self, dialect: str, label: str | None = None) -> None:
        super().__init__(dialect)
        self.label = label or dialect
        self.calls = 0

    def _call(self, name: str, args: dict[str, Any]) -> ScriptBehavior:
        self.calls += 1
        args_json = msgspec.json.encode(args).decode()
        call: dict[str, Any] = {
            "id": (f"toolu_cs{self.calls:04d}" if self.dialect == "anthropic"
                   else f"call_cs{self.calls:04d}"),
            "name": name, "arguments": args, "arguments_json": args_json,
            "fragments": [args_json[:10], args_json[10:]], "item_id": f"fc_cs{self.calls:04d}"}
        if self.dialect == "gemini":
            call["id"] = None
            call["thought_signature"] = GEMINI_SIG
        return ScriptBehavior(tool_call=True, tools=[call])

    def _script(self, rec: fu.Received) -> fu.Behavior:
        raw = rec.body.decode("utf-8", "replace")
        body = rec.json if isinstance(rec.json, dict) else {}
        tools = _tool_names(self.dialect, body)
        if TOOL_OUTPUT in raw:
            return fu.Behavior(text=f"TOOL_DONE {TOOL_OUTPUT} via {self.label}")
        if FILE_MARKER in raw:
            return fu.Behavior(text=f"READ_DONE {FILE_MARKER} via {self.label}")
        if "READPNG" in raw and self.has_tool_result(raw):
            seen = "IMAGE_SEEN" if self.calls_png_done(raw) else "IMAGE_MISSING"
            return fu.Behavior(text=f"{seen} via {self.label}")
        if "RUNTOOL" in raw and "Bash" in tools:
            return self._call("Bash", {"command": TOOL_COMMAND,
                                       "description": "Print the marker"})
        if "READTXT" in raw and "Read" in tools:
            m = re.search(r'READTXT ([^\s"\\]+)', raw)
            return self._call("Read", {"file_path": m.group(1) if m else "/nonexistent"})
        if "READPNG" in raw and "Read" in tools:
            m = re.search(r'READPNG ([^\s"\\]+)', raw)
            return self._call("Read", {"file_path": m.group(1) if m else "/nonexistent"})
        return fu.Behavior(text=f"PONG from {self.label}")

    @staticmethod
    def has_tool_result(raw: str) -> bool:
        return any(k in raw for k in ('"tool_result"', '"function_call_output"',
                                      '"functionResponse"', '"role":"tool"'))

    @staticmethod
    def calls_png_done(raw: str) -> bool:
        return PNG_B64_PREFIX in raw or "image/png" in raw

    def _answer_plan(self, kind: str, model: str, rec: fu.Received,
                     behavior: fu.Behavior, echo: str | None = None) -> Any:
        if kind in ("generate", "stream") and behavior == fu.Behavior():
            behavior = self._script(rec)
        return super()._answer_plan(kind, model, rec, behavior, echo)

    def _answer(self, behavior: fu.Behavior) -> Any:
        if isinstance(behavior, ScriptBehavior):
            return fu._Answer(chunks=[], tools=behavior.tools, with_text=False)
        return super()._answer(behavior)


# ------------------------------------------------------------------ stack

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(p: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False


# ---------------------------------------------------------------- logging proxy


class Proxy:
    """Pass-through HTTP proxy that records what the client sends (the gateway's view)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.log: list[dict[str, Any]] = []
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        body = await req.read()
        entry: dict[str, Any] = {"t": time.time(), "method": req.method, "path": req.path_qs,
                                 "headers": dict(req.headers), "body_bytes": len(body)}
        try:
            entry["json"] = json.loads(body) if body else None
        except ValueError:
            entry["raw"] = body[:2000].decode("utf-8", "replace")
        self.log.append(entry)
        headers = {k: v for k, v in req.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding")}
        async with aiohttp.ClientSession(auto_decompress=False) as s, \
                s.request(req.method, self.target + req.path_qs, data=body,
                          headers=headers, allow_redirects=False) as up:
            entry["status"] = up.status
            entry["resp_headers"] = dict(up.headers)
            resp = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    resp.headers[k] = v
            await resp.prepare(req)
            got = bytearray()
            async for chunk in up.content.iter_any():
                got += chunk
                await resp.write(chunk)
            entry["resp_body"] = bytes(got[:20000]).decode("utf-8", "replace")
            await resp.write_eof()
            return resp

    def start(self) -> Proxy:
        ready = threading.Event()

        async def main() -> None:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._loop = asyncio.get_running_loop()
            ready.set()
            while True:
                await asyncio.sleep(3600)

        def run() -> None:
            with contextlib.suppress(Exception):
                asyncio.run(main())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._runner:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(5)


# ---------------------------------------------------------------- stack


class Stack:
    def __init__(self, gw_port: int | None = None, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="cs-claude-"))
        self.home = self.base / "cs-home"
        self.claude_home = self.base / "claude-home"
        self.work = self.base / "work"
        for d in (self.home, self.claude_home, self.work):
            d.mkdir(parents=True, exist_ok=True)
        if gw_port is None or not port_free(gw_port):
            gw_port = free_port()
        self.gw_port = gw_port
        self.nats_port = free_port()
        self.fakes: dict[str, ScriptedFake] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proxy: Proxy | None = None

    def start(self) -> Stack:
        self.fakes = {
            "fa": ScriptedFake("anthropic", "fa").start(),
            "fc": ScriptedFake("openai-chat", "fc").start(),
            "fr": ScriptedFake("openai-responses", "fr").start(),
            "fg": ScriptedFake("gemini", "fg").start(),
        }
        prio = {"fa": 1, "fc": 2, "fr": 3, "fg": 4}
        lines = ["[gateway]", f"port = {self.gw_port}", "",
                 "[routing]", "breaker = { failures = 50, window_s = 60, cooldown_s = 5, "
                 "successes = 1 }", ""]
        for name, f in self.fakes.items():
            lines += ["[[providers]]", f'name = "{name}"', f'dialect = "{f.dialect}"',
                      f'base_url = "{f.base_url}"', f'api_key = "fake-key-{name}"',
                      f"priority = {prio[name]}", ""]
        self.config = self.base / "codeswitch.toml"
        self.config.write_text("\n".join(lines))
        # our own nats-server on a private port (the embedded one prefers 18122)
        nats_dir = self.base / "nats"
        nats_dir.mkdir(exist_ok=True)
        conf = nats_dir / "nats.conf"
        conf.write_text(f'host: 127.0.0.1\nport: {self.nats_port}\nmax_payload: 8388608\n'
                        f'jetstream {{\n  store_dir: "{nats_dir / "js"}"\n}}\n')
        logf = open(self.base / "nats.log", "ab")  # noqa: SIM115
        self.procs.append(subprocess.Popen([str(VENV / "nats-server"), "-c", str(conf)],
                                           stdout=logf, stderr=logf, start_new_session=True))
        deadline = time.time() + 10
        while port_free(self.nats_port) and time.time() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "CODESWITCH_HOME": str(self.home)}
        gwlog = open(self.base / "gateway.log", "ab")  # noqa: SIM115
        self.procs.append(subprocess.Popen(
            [str(VENV / "codeswitch"), "up", "--port", str(self.gw_port), "--config",
             str(self.config), "--nats-url", f"nats://127.0.0.1:{self.nats_port}",
             "--grace", "3"],
            stdout=gwlog, stderr=gwlog, env=env, start_new_session=True))
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                import urllib.request
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.gw_port}/readiness", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.2)
        else:
            raise RuntimeError("gateway not ready; see " + str(self.base / "gateway.log"))
        self.proxy = Proxy(f"http://127.0.0.1:{self.gw_port}").start()
        return self

    def stop(self) -> None:
        if self.proxy:
            self.proxy.stop()
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for f in self.fakes.values():
            f.stop()

    # ------------------------------------------------------------ claude

    def claude(self, prompt: str, *, pin: str | None = None, stream_json: bool = False,
               extra_env: dict[str, str] | None = None, args: list[str] | None = None,
               timeout: float = 120, via_settings: bool = False,
               ) -> subprocess.CompletedProcess[str]:
        """Run `claude -p`; with via_settings the gateway comes only from what
        `codeswitch connect claude` wrote into ~/.claude/settings.json."""
        assert self.proxy is not None
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ANTHROPIC_", "CLAUDE_", "CODESWITCH_"))}
        if not via_settings:
            env.update({"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{self.proxy.port}",
                        "ANTHROPIC_AUTH_TOKEN": "sk-cs-test"})
        env.update({
            "HOME": str(self.claude_home),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_BUG_COMMAND": "1",
            "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
        })
        if pin:
            env["ANTHROPIC_CUSTOM_HEADERS"] = f"x-codeswitch-provider: {pin}"
        env.update(extra_env or {})
        cmd = [str(CLAUDE), "-p", prompt]
        if stream_json:
            cmd += ["--output-format", "stream-json", "--verbose"]
        cmd += args or []
        return subprocess.run(cmd, env=env, cwd=self.work, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def claude_version() -> str:
    out = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True,
                         env={**os.environ, "HOME": tempfile.mkdtemp()}, timeout=30)
    return out.stdout.split()[0] if out.stdout else "unknown"


def ensure_cli() -> None:
    if CLAUDE.exists():
        return
    CLI_PREFIX.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "i", "--prefix", str(CLI_PREFIX), "@anthropic-ai/claude-code"],
                   check=True)


# ------------------------------------------------------------------ scenarios

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, evidence: str) -> None:
    RESULTS.append((name, ok, evidence))
    print(f"{'PASS' if ok else 'FAIL'} {name}: {evidence}", flush=True)


def stream_events(stdout: str) -> list[dict[str, Any]]:
    out = []
    for line in stdout.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def pick_port() -> int:
    want = int(os.environ.get("CC_PORT", "18200"))
    for p in range(want, 18300):
        if port_free(p):
            return p
    return free_port()


def reasoning_chat_body() -> bytes:
    args = json.dumps({"command": TOOL_COMMAND, "description": "Print the marker"})
    out = []

    def ch(delta: dict[str, Any] | None, fin: str | None = None, usage: Any = None) -> None:
        d: dict[str, Any] = {"id": "chatcmpl-cs", "object": "chat.completion.chunk",
                             "created": 1, "model": "deepseek-chat",
                             "choices": [] if delta is None else
                             [{"index": 0, "delta": delta, "finish_reason": fin}]}
        if usage:
            d["usage"] = usage
        out.append("data: " + json.dumps(d) + "\n\n")

    ch({"role": "assistant", "content": None, "reasoning_content": ""})
    ch({"reasoning_content": "CS_REASONING_TOKEN run the marker."})
    ch({"tool_calls": [{"index": 0, "id": "call_ds1", "type": "function",
                        "function": {"name": "Bash", "arguments": ""}}]})
    ch({"tool_calls": [{"index": 0, "function": {"arguments": args}}]})
    ch({}, "tool_calls")
    ch(None, usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    return ("".join(out) + "data: [DONE]\n\n").encode()


def main(filters: list[str]) -> int:
    ensure_cli()
    version = claude_version()
    print(f"Claude Code {version}", flush=True)
    keep = os.environ.get("CC_KEEP") == "1"
    st = Stack(gw_port=pick_port())
    cap = CLI_PREFIX / "captured"
    cap.mkdir(parents=True, exist_ok=True)

    def want(n: str) -> bool:
        return not filters or any(f in n for f in filters)

    def reset() -> None:
        for f in st.fakes.values():
            f.default = Behavior()
            f._queue.clear()

    def since(n0: int) -> list[dict[str, Any]]:
        assert st.proxy is not None
        return [e for e in st.proxy.log[n0:] if e["method"] == "POST"]

    try:
        st.start()
        print(f"gateway :{st.gw_port}  nats :{st.nats_port}  proxy :{st.proxy.port}  "
              f"dir {st.base}", flush=True)
        (st.work / "red.png").write_bytes(_png())
        for pin, f in st.fakes.items():
            reset()
            if want(f"text-{pin}"):
                r = st.claude("Say hello", pin=pin)
                check(f"text-{pin}", r.returncode == 0 and f"PONG from {pin}" in r.stdout,
                      f"rc={r.returncode} stdout={r.stdout.strip()[:80]!r}")
            if want(f"stream-{pin}"):
                r = st.claude("Say hello", pin=pin, stream_json=True)
                ev = stream_events(r.stdout)
                res = next((e for e in ev if e.get("type") == "result"), {})
                texts = [b.get("text") for e in ev if e.get("type") == "assistant"
                         for b in e["message"]["content"] if b.get("type") == "text"]
                check(f"stream-{pin}", res.get("subtype") == "success" and not res.get("is_error")
                      and f"PONG from {pin}" in texts and bool(res.get("usage", {}).get(
                          "output_tokens")),
                      f"types={[e.get('type') for e in ev]} text={texts} "
                      f"usage_out={res.get('usage', {}).get('output_tokens')}")
            if want(f"tool-{pin}"):
                n0, f0 = len(st.proxy.log), len(f.requests)
                r = st.claude("RUNTOOL: run the marker command with Bash", pin=pin,
                              stream_json=True, args=["--allowedTools", "Bash"])
                ev = stream_events(r.stdout)
                res = next((e for e in ev if e.get("type") == "result"), {})
                ups = f.requests[f0:]
                tr = [b for e in ev if e.get("type") == "user"
                      for b in e["message"]["content"] if b.get("type") == "tool_result"]
                ok = (f"TOOL_DONE {TOOL_OUTPUT} via {pin}" in (res.get("result") or "")
                      and len(ups) == 2 and TOOL_OUTPUT in ups[1].body.decode()
                      and TOOL_OUTPUT not in ups[0].body.decode())
                check(f"tool-{pin}", ok, f"result={res.get('result')!r} tool_result="
                      f"{[t.get('content') for t in tr]} upstream_requests={len(ups)}")
                if pin == "fa" and len(since(n0)) >= 2:
                    _save(cap, version, "tool-turn2-request", since(n0)[1])
            if want(f"read-{pin}"):
                f0 = len(f.requests)
                r = st.claude(f"READPNG {st.work}/red.png please", pin=pin,
                              args=["--allowedTools", "Read", "--max-turns", "4"])
                check(f"read-{pin}", r.returncode == 0 and f"IMAGE_SEEN via {pin}" in r.stdout,
                      f"stdout={r.stdout.strip()[:80]!r} upstream_requests="
                      f"{len(f.requests) - f0}")
        reset()
        if want("connect-claude"):
            # `codeswitch connect claude` alone points the real CLI at the gateway; disconnect
            # puts settings.json back byte for byte
            settings = st.claude_home / ".claude" / "settings.json"
            settings.parent.mkdir(parents=True, exist_ok=True)
            before = '{\n  "theme": "dark"\n}\n'
            settings.write_text(before)
            cs_env = {**os.environ, "HOME": str(st.claude_home),
                      "CODESWITCH_HOME": str(st.base / "cs-connect")}
            con = subprocess.run([str(VENV / "codeswitch"), "connect", "claude", "--base-url",
                                  f"http://127.0.0.1:{st.proxy.port}"], env=cs_env,
                                 capture_output=True, text=True, timeout=60)
            r = st.claude("Say hello", via_settings=True)
            dis = subprocess.run([str(VENV / "codeswitch"), "disconnect", "claude"],
                                 env=cs_env, capture_output=True, text=True, timeout=60)
            check("connect-claude", con.returncode == 0 and r.returncode == 0
                  and "PONG from fa" in r.stdout and dis.returncode == 0
                  and settings.read_text() == before,
                  f"connect rc={con.returncode} stdout={r.stdout.strip()[:40]!r} "
                  f"restored={settings.read_text() == before}")
        if want("haiku-fg"):
            n0 = len(st.proxy.log)
            r = st.claude("Say hello", pin="fg", args=["--model", "haiku"])
            models = [e["json"].get("model") for e in since(n0)]
            check("haiku-fg", r.returncode == 0 and "PONG from fg" in r.stdout
                  and any("haiku" in (m or "") for m in models),
                  f"models={models} stdout={r.stdout.strip()[:60]!r}")
        for name, beh in (("fallback-503", Behavior(status=503)),
                          ("fallback-429", Behavior(status=429, headers={"retry-after": "1"})),
                          ("fallback-instream", Behavior(stream_error_after=1))):
            if not want(name):
                continue
            reset()
            time.sleep(1.2)  # let an earlier 429 cool-down expire
            st.fakes["fa"].default = beh
            fa0, fc0, n0 = len(st.fakes["fa"].requests), len(st.fakes["fc"].requests), \
                len(st.proxy.log)
            r = st.claude("Say hello")
            prov = [(e.get("resp_headers") or {}).get("x-codeswitch-provider")
                    for e in since(n0)]
            check(name, r.returncode == 0 and "PONG from fc" in r.stdout
                  and len(st.fakes["fa"].requests) > fa0 and len(st.fakes["fc"].requests) > fc0,
                  f"stdout={r.stdout.strip()[:40]!r} served_by={prov}")
        for name, pin, beh, expect in (
                ("error-429", "fa", Behavior(status=429), "429"),
                ("error-503-fc", "fc", Behavior(status=503), "Service unavailable"),
                ("error-400", "fa", Behavior(status=400), "400"),
                ("error-429-fg", "fg", Behavior(status=429), "429")):
            if not want(name):
                continue
            reset()
            st.fakes[pin].default = beh
            n0 = len(st.proxy.log)
            r = st.claude("Say hello", pin=pin, extra_env={"CLAUDE_CODE_MAX_RETRIES": "1"})
            statuses = [e.get("status") for e in since(n0)]
            body = (since(n0) or [{}])[0].get("resp_body", "")
            shaped = '"type":"error"' in body.replace(" ", "")
            check(name, r.returncode != 0 and expect in r.stdout and shaped,
                  f"rc={r.returncode} stdout={r.stdout.strip()[:110]!r} statuses={statuses}")
        reset()
        if want("midstream-error"):
            st.fakes["fa"].default = Behavior(text="partial answer then boom",
                                              stream_error_after=5)
            n0 = len(st.proxy.log)
            r = st.claude("Say hello", pin="fa", extra_env={"CLAUDE_CODE_MAX_RETRIES": "1"})
            posts = since(n0)
            streams = [bool((e.get("json") or {}).get("stream")) for e in posts]
            first = posts[0].get("resp_body", "") if posts else ""
            check("midstream-error", "event: error" in first and len(posts) >= 2
                  and streams[-1] is False and r.returncode == 0,
                  f"stream flags={streams} rc={r.returncode} stdout={r.stdout.strip()[:60]!r}")
            reset()
        if want("count-tokens"):
            n0 = len(st.proxy.log)
            st.claude("Say hello", pin="fa")
            cc = since(n0)[0]["json"]
            body = {k: cc[k] for k in ("model", "messages", "system", "tools") if k in cc}
            got = {}
            for pin in st.fakes:
                s, _, b = _http(st, "POST", "/v1/messages/count_tokens?beta=true", body,
                                {"x-codeswitch-provider": pin})
                got[pin] = (s, json.loads(b).get("input_tokens") if s == 200 else b[:80])
            check("count-tokens", all(s == 200 and isinstance(n, int) and n > 0
                                      for s, n in got.values()) and got["fa"][1] == 42,
                  f"{got} (fa passes through: the fake answers 42; others are estimated)")
        if want("models"):
            s, _, b = _http(st, "GET", "/v1/models", None, {})
            doc = json.loads(b) if s == 200 else {}
            check("models", s == 200 and isinstance(doc.get("data"), list),
                  f"status={s} data={len(doc.get('data') or [])} (no exact model names "
                  "configured: globs are not listed)")
        if want("reasoning-chat"):
            reset()
            fc = st.fakes["fc"]
            fc.push(Behavior(body=reasoning_chat_body()))
            f0 = len(fc.requests)
            r = st.claude("RUNTOOL: go", pin="fc", args=["--allowedTools", "Bash"])
            ups = fc.requests[f0:]
            turn = {}
            if len(ups) >= 2:
                turn = next((m for m in ups[1].json["messages"]
                             if m.get("role") == "assistant" and m.get("tool_calls")), {})
            check("reasoning-chat", "TOOL_DONE" in r.stdout
                  and "CS_REASONING_TOKEN" in (turn.get("reasoning_content") or ""),
                  f"stdout={r.stdout.strip()[:50]!r} assistant turn keys sent upstream="
                  f"{sorted(turn)} (DeepSeek thinking mode answers 400 without "
                  "reasoning_content on tool-call turns)")
        gw = f"http://127.0.0.1:{st.gw_port}"
        if want("lost-424"):
            # the router that took the request is killed while fa holds the call: the edge
            # answers 424 + x-should-retry: false; Claude Code must not send it again
            reset()
            fa = st.fakes["fa"]
            fa.push(Behavior(hang=True))
            b0, n0 = faults.answered(gw, "anthropic"), len(st.proxy.log)
            t, info = faults.kill_router_on_call(st.home, fa, len(fa.requests) + 1)
            t0 = time.monotonic()
            r = st.claude("Say hello", pin="fa", timeout=300)
            took = time.monotonic() - t0
            t.join(10)
            got = faults.since(b0, faults.answered(gw, "anthropic"))
            posts = since(n0)
            hdr = {k.lower(): v for k, v in (posts[0].get("resp_headers") or {}).items()} \
                if posts else {}
            check("lost-424", posts and posts[0].get("status") == 424
                  and hdr.get("x-should-retry") == "false" and got == {424: 1}
                  and len(posts) == 1 and r.returncode != 0 and "billed twice" in r.stdout,
                  f"gateway answers={got} attempts={len(posts)} rc={r.returncode} {took:.1f}s "
                  f"x-should-retry={hdr.get('x-should-retry')} shown={r.stdout.strip()[:150]!r}"
                  + (f" {info['error']}" if "error" in info else ""))
            faults.wait_ready(gw, st.home, info.get("pid"))
        if want("final-503"):
            # no router takes the request (stopped): the edge answers 503 after the pickup
            # timeout, every time; Claude Code retries (default retries) and then shows it
            reset()
            b0, n0 = faults.answered(gw, "anthropic"), len(st.proxy.log)
            t0 = time.monotonic()
            with faults.stopped_router(st.home):
                r = st.claude("Say hello", pin="fa", timeout=600)
            took = time.monotonic() - t0
            got = faults.since(b0, faults.answered(gw, "anthropic"))
            posts = since(n0)
            check("final-503", r.returncode != 0 and got == {503: len(posts)} and len(posts) > 1
                  and "no router available" in r.stdout,
                  f"gateway answers={got} attempts={len(posts)} (retries={len(posts) - 1}) "
                  f"rc={r.returncode} {took:.1f}s shown={r.stdout.strip()[:150]!r}")
            faults.wait_ready(gw, st.home, None)
        if st.proxy is not None:
            first = next((e for e in st.proxy.log if e["method"] == "POST"), None)
            if first:
                _save(cap, version, "messages-request", first)
    finally:
        st.stop()
        if not keep:
            shutil.rmtree(st.base, ignore_errors=True)
    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)} passed, {len(failed)} failed"
          + (f": {' '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _save(cap: Path, version: str, name: str, entry: dict[str, Any]) -> None:
    keep = {k: entry.get(k) for k in ("method", "path", "headers", "json", "status")}
    (cap / f"claude-code-{version}_bench_{name}.json").write_text(
        json.dumps(keep, indent=1, default=str))


def _http(st: Stack, method: str, path: str, body: Any,
          headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    assert st.proxy is not None
    h = {"anthropic-version": "2023-06-01", "authorization": "Bearer sk-cs-test",
         "content-type": "application/json", **headers}
    req = urllib.request.Request(f"http://127.0.0.1:{st.proxy.port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def _png() -> bytes:
    import struct
    import zlib
    w = h = 16
    raw = b"".join(b"\x00" + bytes([200, 30, 30] * w) for _ in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return (struct.pack(">I", len(d)) + t + d
                + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
