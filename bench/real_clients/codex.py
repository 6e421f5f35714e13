#!/usr/bin/env python3
"""Real OpenAI Codex CLI against the codeswitch gateway, end to end (a by-hand check, not CI).

    .venv/bin/python bench/real_clients/codex.py            # every scenario
    .venv/bin/python bench/real_clients/codex.py tool- error-   # scenarios whose name contains ...

What it does: installs `@openai/codex` with npm into $CX_DIR (default /tmp/realcli/codex) if it
is missing; starts scripted fake providers (tests/fakes/upstream.py, one per dialect, plus
failing/fallback ones), its own nats-server (port CX_PORT+51) and `codeswitch up` on CX_PORT
(default 18300, or the next port that binds), all with a temporary HOME / CODEX_HOME /
CODESWITCH_HOME; writes Codex's config with `codeswitch connect codex`; runs `codex exec --json`
per scenario; prints PASS/FAIL per scenario; stops everything and removes the temp dirs
(CX_KEEP=1 keeps them). Requests are saved to $CX_DIR/captured/codex-<version>-*.json.

Scenarios (for each provider dialect openai-responses | openai-chat | anthropic | gemini):
  text-<d>       plain streamed answer; Codex's message and turn usage match the fake's usage
  completed-<d>  Codex's own request body replayed through the gateway: response.created first,
                 output_item.done, response.completed with resp_ id, status and usage
  tool-<d>       exec_command round trip (Codex runs `echo`, sends function_call_output back),
                 reasoning block with an opaque token echoed back upstream on turn 2
  patch-<d>      apply_patch (custom free-form tool) round trip: the file is really written
and: namespace-anthropic (a `namespace` group tool through a translated provider),
direct-capture (Codex pointed at the fake directly, to record its exact headers), error-429,
error-429-retry-after, error-503, error-400 (Codex's retry behaviour and message),
fallback-429 and fallback-instream (priority 1 fails, priority 2 answers invisibly),
midstream-error (error after content: Codex reconnects), lost-424 (the router that took the
request is SIGKILLed while the provider holds the call: the gateway answers Codex 400, not 424,
+ x-should-retry: false; Codex must show it and not send it again), final-503 (the router
SIGSTOPped: the gateway's own retryable 503 "no router available" to every attempt; Codex's
default retries, ~3 minutes). The faults: bench/real_clients/_faults.py.

The scripted fake provider:
A scripted fake provider for a Codex tool round trip (built on tests/fakes/upstream.py).

ScriptedFake(dialect, reasoning=False) answers each POST by looking at the request body:
  * the request already carries a tool result (Responses function_call_output /
    custom_tool_call_output, Chat role "tool", Anthropic tool_result, Gemini functionResponse)
    -> a final text "ROUNDTRIP-DONE: <first line of the tool output>";
  * the prompt contains RUN_TOOL  -> a call of Codex's `exec_command` tool with CMD;
  * the prompt contains RUN_PATCH -> an `apply_patch` call (custom tool natively, function with
    {"input": ...} when translated) that adds cs_patch.txt;
  * otherwise the fake's default text.
reasoning=True prepends a reasoning block carrying an opaque token (Anthropic thinking +
signature, Responses reasoning item + encrypted_content, Gemini thought + thoughtSignature on
the function call, Chat reasoning_content) so the echo on the next turn can be checked.
Queued Behaviors (push) still apply for status errors etc.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = os.environ.get("CX_REPO", str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, REPO)

import _faults as faults  # noqa: E402  (bench/real_clients/_faults.py)
import msgspec  # noqa: E402

from tests.fakes import upstream as U  # noqa: E402
from tests.fakes.upstream import DEFAULT_TEXT, Behavior, FakeUpstream  # noqa: E402

# --------------------------------------------------------------------------- scripted fake

CMD = "echo codeswitch-$((6*7))"
CMD_OUT = "codeswitch-42"
PATCH = "*** Begin Patch\n*** Add File: cs_patch.txt\n+patched-by-codeswitch\n*** End Patch\n"
SIG = {"anthropic": "sig-anthropic-OPAQUE-123", "openai-responses": "enc-responses-OPAQUE-123",
       "gemini": "sig-gemini-OPAQUE-123", "openai-chat": None}
THINK_TEXT = "Thinking about the command to run."


def _has_tool_result(dialect: str, body: dict[str, Any]) -> str | None:
    """The first tool result's text, or None."""
    def text_of(v: Any) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, list):
            return "".join(text_of(x) for x in v)
        if isinstance(v, dict):
            for k in ("text", "output", "content", "result"):
                if k in v:
                    return text_of(v[k])
            return json.dumps(v)
        return str(v)

    if dialect == "openai-responses":
        for it in body.get("input") or []:
            if isinstance(it, dict) and it.get("type") in ("function_call_output",
                                                           "custom_tool_call_output"):
                return text_of(it.get("output"))
    elif dialect == "openai-chat":
        for m in body.get("messages") or []:
            if m.get("role") == "tool":
                return text_of(m.get("content"))
    elif dialect == "anthropic":
        for m in body.get("messages") or []:
            for b in m.get("content") or [] if isinstance(m.get("content"), list) else []:
                if b.get("type") == "tool_result":
                    return text_of(b.get("content"))
    else:
        for c in body.get("contents") or []:
            for p in c.get("parts") or []:
                if "functionResponse" in p:
                    return text_of(p["functionResponse"].get("response"))
    return None


def _tool(dialect: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    aj = json.dumps(args)
    frags = [aj[i:i + 12] for i in range(0, len(aj), 12)]
    return {
        "id": {"anthropic": "toolu_cs42", "gemini": None}.get(dialect, "call_cs42"),
        "item_id": "fc_cs42", "name": name, "arguments": args, "arguments_json": aj,
        "fragments": (["", *frags] if dialect == "anthropic" else frags),
        "thought_signature": SIG["gemini"] if dialect == "gemini" else None,
    }


def _ev_json(ev: bytes) -> tuple[str | None, Any]:
    name = None
    data = None
    for line in ev.decode().splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
    return name, (json.loads(data) if data and data != "[DONE]" else data)


def _sse(name: str | None, doc: Any) -> bytes:
    head = f"event: {name}\n" if name else ""
    return (head + "data: " + json.dumps(doc) + "\n\n").encode()


def _ns(doc: Any) -> Any:
    """Mark function_call items as belonging to the multi_agent_v1 namespace."""
    if isinstance(doc, dict):
        if doc.get("type") == "function_call":
            doc["namespace"] = "multi_agent_v1"
        for v in doc.values():
            _ns(v)
    elif isinstance(doc, list):
        for v in doc:
            _ns(v)
    return doc


class ScriptedFake(FakeUpstream):
    def __init__(self, dialect: str, reasoning: bool = False) -> None:
        super().__init__(dialect)
        self.reasoning = reasoning
        self._tools: list[dict[str, Any]] = []
        self.decisions: list[str] = []

    def clear(self) -> None:
        super().clear()
        self.decisions.clear()

    def _answer(self, behavior: Behavior) -> U._Answer:
        ans = super()._answer(behavior)
        if behavior.tool_call:
            ans.tools = self._tools
            ans.chunks = []
            ans.with_text = False
        return ans

    def _answer_plan(self, kind, model, rec, behavior, echo=None):  # type: ignore[override]
        body = rec.json if isinstance(rec.json, dict) else {}
        raw = rec.body
        result = _has_tool_result(self.dialect, body) if kind != "count" else None
        decision = "text"
        if kind != "count" and behavior.text is None and not behavior.tool_call:
            if result is not None:
                line = result.strip().splitlines()
                first = next((x for x in line if "codeswitch-42" in x or "cs_patch" in x
                              or "Success" in x), line[0] if line else "")
                behavior = msgspec.structs.replace(
                    behavior, text=f"ROUNDTRIP-DONE: {first.strip()[:120]}")
                decision = "final"
            elif b"RUN_TOOL" in raw:
                self._tools = [_tool(self.dialect, "exec_command", {"cmd": CMD})]
                behavior = msgspec.structs.replace(behavior, tool_call=True)
                decision = "tool"
            elif b"RUN_NS" in raw:  # a tool inside Codex's `namespace` tool group
                self._tools = [_tool(self.dialect, "close_agent", {"target": "agent-x"})]
                behavior = msgspec.structs.replace(behavior, tool_call=True)
                decision = "ns"
            elif b"RUN_PATCH" in raw:
                self._tools = [_tool(self.dialect, "apply_patch", {"input": PATCH})]
                behavior = msgspec.structs.replace(behavior, tool_call=True)
                decision = "patch"
        self.decisions.append(decision)
        plan = super()._answer_plan(kind, model, rec, behavior, echo)
        if decision == "patch" and self.dialect == "openai-responses":
            plan = self._custom_patch(plan)
        if decision == "ns" and self.dialect == "openai-responses" and b"RUN_NS_NATIVE" in raw:
            plan.events = [_sse(n, _ns(doc)) for n, doc in map(_ev_json, plan.events)]
        if self.reasoning and kind == "stream" and plan.events:
            plan.events = self._with_reasoning(plan.events)
        return plan

    # ---- Responses: apply_patch is a custom (free-form) tool natively
    def _custom_patch(self, plan):
        if not plan.events:
            return plan
        out = []
        for ev in plan.events:
            name, doc = _ev_json(ev)
            if name == "response.function_call_arguments.delta":
                continue
            if name == "response.function_call_arguments.done":
                continue
            for key in ("item",):
                it = doc.get(key) if isinstance(doc, dict) else None
                if it and it.get("type") == "function_call":
                    doc[key] = {"id": it["id"], "type": "custom_tool_call", "status": it["status"],
                                "call_id": it["call_id"], "name": "apply_patch",
                                "input": PATCH if it["status"] == "completed" else ""}
            if name == "response.completed":
                doc["response"]["output"] = [
                    {"id": o["id"], "type": "custom_tool_call", "status": "completed",
                     "call_id": o["call_id"], "name": "apply_patch", "input": PATCH}
                    if o.get("type") == "function_call" else o
                    for o in doc["response"]["output"]]
            out.append(_sse(name, doc))
        plan.events = out
        return plan

    # ---- reasoning injection
    def _with_reasoning(self, events: list[bytes]) -> list[bytes]:
        d = self.dialect
        if d == "anthropic":
            out = []
            for ev in events:
                name, doc = _ev_json(ev)
                if isinstance(doc, dict) and "index" in doc:
                    doc["index"] += 1
                out.append(_sse(name, doc))
                if name == "message_start":
                    out += [
                        _sse("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "thinking", "thinking": "",
                                               "signature": ""}}),
                        _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": THINK_TEXT}}),
                        _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "signature_delta", "signature": SIG[d]}}),
                        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    ]
            return out
        if d == "openai-responses":
            rs = {"id": "rs_cs42", "type": "reasoning",
                  "summary": [{"type": "summary_text", "text": THINK_TEXT}],
                  "encrypted_content": SIG[d]}
            docs = []
            for ev in events:
                name, doc = _ev_json(ev)
                if isinstance(doc, dict) and "output_index" in doc:
                    doc["output_index"] += 1
                if name == "response.completed":
                    doc["response"]["output"].insert(0, rs)
                docs.append((name, doc))
                if name == "response.in_progress":
                    base = {"item_id": "rs_cs42", "output_index": 0, "summary_index": 0}
                    docs += [
                        ("response.output_item.added", {"output_index": 0, "item": {
                            "id": "rs_cs42", "type": "reasoning", "summary": []}}),
                        ("response.reasoning_summary_part.added",
                         {**base, "part": {"type": "summary_text", "text": ""}}),
                        ("response.reasoning_summary_text.delta", {**base, "delta": THINK_TEXT}),
                        ("response.reasoning_summary_text.done", {**base, "text": THINK_TEXT}),
                        ("response.reasoning_summary_part.done",
                         {**base, "part": {"type": "summary_text", "text": THINK_TEXT}}),
                        ("response.output_item.done", {"output_index": 0, "item": rs}),
                    ]
            out = []
            for seq, (name, doc) in enumerate(docs):
                doc = {"type": name, "sequence_number": seq,
                       **{k: v for k, v in doc.items() if k not in ("type", "sequence_number")}}
                out.append(_sse(name, doc))
            return out
        if d == "gemini":
            first = events[0]
            _, doc = _ev_json(first)
            doc = json.loads(json.dumps(doc))
            doc["candidates"][0]["content"]["parts"] = [{"text": THINK_TEXT, "thought": True}]
            doc["candidates"][0].pop("finishReason", None)
            return [b"data: " + json.dumps(doc).encode() + b"\r\n\r\n", *events]
        # openai-chat: DeepSeek-style reasoning_content first
        _, doc = _ev_json(events[0])
        doc = json.loads(json.dumps(doc))
        doc["choices"][0]["delta"] = {"role": "assistant", "content": None,
                                      "reasoning_content": THINK_TEXT}
        return [b"data: " + json.dumps(doc).encode() + b"\n\n", *events]


# --------------------------------------------------------------------------- harness


CX_DIR = os.environ.get("CX_DIR", "/tmp/realcli/codex")
PORT = int(os.environ.get("CX_PORT", "18300"))
NATS_PORT = int(os.environ.get("CX_NATS_PORT", str(PORT + 51)))
CODEX = os.path.join(CX_DIR, "node_modules/.bin/codex")
MODEL = "gpt-5.5"
CAPTURE_DIR = os.path.join(CX_DIR, "captured")

RESULTS: list[tuple[str, bool, str]] = []


def log(*a: object) -> None:
    print(*a, flush=True)


def ensure_codex() -> str:
    if not os.path.exists(CODEX):
        log(f"installing @openai/codex into {CX_DIR}")
        subprocess.run(["npm", "i", "--prefix", CX_DIR, "@openai/codex"], check=True,
                       stdout=subprocess.DEVNULL)
    v = subprocess.run([CODEX, "--version"], capture_output=True, text=True).stdout.strip()
    return v.split()[-1]


class Env:
    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cx-real-")
        self.home = os.path.join(self.tmp, "home")
        self.codex_home = os.path.join(self.home, ".codex")
        self.cs_home = os.path.join(self.tmp, "cs-home")
        os.makedirs(self.codex_home)
        self.fakes: dict[str, ScriptedFake] = {}
        self.gw: subprocess.Popen | None = None
        self.nats = None

    def fake(self, name: str, dialect: str, reasoning: bool = True) -> ScriptedFake:
        f = ScriptedFake(dialect, reasoning=reasoning).start()
        self.fakes[name] = f
        return f

    def start_gateway(self, providers: list[dict]) -> None:
        global PORT, NATS_PORT
        lines = [f"[gateway]\nport = {PORT}\n"]
        for p in providers:
            lines.append("[[providers]]")
            for k, v in p.items():
                lines.append(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}")
            lines.append("")
        cfg = os.path.join(self.tmp, "codeswitch.toml")
        Path(cfg).write_text("\n".join(lines))
        from runtime.natsd import EmbeddedNats
        # `codeswitch up` refuses a port that still has TIME_WAIT sockets (its pre-check binds
        # without SO_REUSEADDR): take the first port from CX_PORT on that binds strictly.
        for cand in range(PORT, PORT + 40):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", cand))
                except OSError:
                    continue
            PORT, NATS_PORT = cand, cand + 51
            break
        self.nats = EmbeddedNats(Path(self.tmp) / "nats", port=NATS_PORT,
                                 log_file=Path(self.tmp) / "nats.log")
        self.nats.start()
        env = dict(os.environ, CODESWITCH_HOME=self.cs_home, HOME=self.home)
        self.gw_log = os.path.join(self.tmp, "gateway.log")
        self.gw = subprocess.Popen(
            [os.path.join(REPO, ".venv/bin/codeswitch"), "up", "--port", str(PORT),
             "--config", cfg, "--nats-url", self.nats.url], env=env, stdout=open(self.gw_log, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readiness", timeout=1)
                return
            except Exception:
                if self.gw.poll() is not None:
                    raise RuntimeError("gateway exited: " + Path(self.gw_log).read_text()[-2000:]
                                       ) from None
                time.sleep(0.25)
        raise RuntimeError("gateway not ready")

    def connect(self) -> str:
        env = dict(os.environ, HOME=self.home, CODEX_HOME=self.codex_home)
        r = subprocess.run([os.path.join(REPO, ".venv/bin/codeswitch"), "connect", "codex",
                            "--base-url", f"http://127.0.0.1:{PORT}", "--home", self.cs_home],
                           env=env, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError("connect failed: " + r.stdout + r.stderr)
        cfg = os.path.join(self.codex_home, "config.toml")
        text = Path(cfg).read_text()
        # quiet Codex: no analytics / plugin / update traffic (tables go after what connect wrote)
        with open(cfg, "a") as fh:
            fh.write("\n[analytics]\nenabled = false\n\n[features]\nplugins = false\n")
        return text

    def codex(self, prompt: str, *extra: str, pin: str | None = None, model: str = MODEL,
              timeout: int = 240) -> tuple[int, list[dict], str, float]:
        work = tempfile.mkdtemp(prefix="work-", dir=self.tmp)
        env = dict(os.environ, HOME=self.home, CODEX_HOME=self.codex_home, NO_COLOR="1")
        env.pop("OPENAI_API_KEY", None)
        args = [CODEX, "exec", "--skip-git-repo-check", "--json", "-m", model,
                "-c", "check_for_update_on_startup=false", "-C", work]
        if pin:
            args += ["-c", "model_providers.codeswitch.http_headers="
                     f'{{"x-codeswitch-provider"="{pin}"}}']
        args += [*extra, prompt]
        t0 = time.time()
        r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        dt = time.time() - t0
        events = []
        for line in r.stdout.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        self.last_work = work
        return r.returncode, events, r.stderr, dt

    def stop(self) -> None:
        if self.gw and self.gw.poll() is None:
            os.killpg(self.gw.pid, signal.SIGTERM)
            try:
                self.gw.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.gw.pid, signal.SIGKILL)
                self.gw.wait(5)
        for f in self.fakes.values():
            f.stop()
        if getattr(self, "nats", None):
            self.nats.stop()
        if not os.environ.get("CX_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)


def _inline(d: dict) -> str:
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in d.items()) + " }"


def _cmds(cmds: list[dict]) -> list[tuple]:
    return [(c.get("command"), c.get("exit_code"),
             (c.get("aggregated_output") or "").strip()[:40]) for c in cmds]


def check(name: str, ok: bool, evidence: str) -> bool:
    RESULTS.append((name, ok, evidence))
    log(f"{'PASS' if ok else 'FAIL'} {name}: {evidence}")
    return ok


def items(events: list[dict], kind: str) -> list[dict]:
    return [e["item"] for e in events if e.get("type") == "item.completed"
            and e["item"].get("type") == kind]


def usage(events: list[dict]) -> dict | None:
    for e in events:
        if e.get("type") == "turn.completed":
            return e.get("usage")
    return None


def errors(events: list[dict]) -> list[str]:
    out = [e["item"].get("message", "") for e in events if e.get("type") == "item.completed"
           and e["item"].get("type") == "error"]
    out += [json.dumps(e) for e in events if e.get("type") in ("turn.failed", "error")]
    return out


def save_capture(version: str, name: str, rec, note: str = "") -> str:
    os.makedirs(CAPTURE_DIR, exist_ok=True)
    path = os.path.join(CAPTURE_DIR, f"codex-{version}-{name}.json")
    json.dump({"note": note, "method": rec.method, "path": rec.path, "query": rec.query,
               "headers": rec.headers, "body": rec.json}, open(path, "w"),  # noqa: SIM115
              indent=1)
    return path


# upstream usage each fake reports, as Codex should show it (turn.completed usage)
EXPECTED_USAGE = {
    # Responses passthrough: 36 in (5 cached), 87 out (6 reasoning)
    "openai-responses": {"input_tokens": 36, "cached_input_tokens": 5, "output_tokens": 87,
                         "reasoning_output_tokens": 6},
    # Chat: prompt 19 (4 cached), completion 10 (3 reasoning)
    "openai-chat": {"input_tokens": 19, "cached_input_tokens": 4, "output_tokens": 10,
                    "reasoning_output_tokens": 3},
    # Anthropic: 25 fresh + 11 read + 7 write = 43 in, 11 cached; 15 out
    "anthropic": {"input_tokens": 43, "cached_input_tokens": 11, "output_tokens": 15},
    # Gemini: 21 prompt (8 cached); 47 + 9 thoughts = 56 out, 9 reasoning
    "gemini": {"input_tokens": 21, "cached_input_tokens": 8, "output_tokens": 56,
               "reasoning_output_tokens": 9},
}

UPSTREAM_MODEL = {"openai-responses": "gpt-5.5", "openai-chat": "deepseek-chat",
                  "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-pro"}


def reasoning_echo(dialect: str, body: dict) -> str | None:
    """Where the opaque reasoning token came back in the 2nd upstream request, or None."""
    s = json.dumps(body)
    if dialect == "openai-chat":
        return "reasoning_content" if THINK_TEXT in s else None
    return "found" if SIG[dialect] in s else None


def raw_stream(body: dict, pin: str) -> list[tuple[str, dict]]:
    """POST a captured Codex body to the gateway and parse its SSE (event, data)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/v1/responses", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer x",
                 "x-codeswitch-provider": pin}, method="POST")
    out = []
    with urllib.request.urlopen(req, timeout=60) as r:
        ev = None
        for raw in r.read().decode().splitlines():
            if raw.startswith("event:"):
                ev = raw[6:].strip()
            elif raw.startswith("data:"):
                d = json.loads(raw[5:])
                out.append((ev or d.get("type"), d))
    return out


def main(filters: list[str]) -> int:
    version = ensure_codex()
    log(f"codex {version}")

    def want(n: str) -> bool:
        return not filters or any(f in n for f in filters)

    env = Env()
    try:
        dialects = ["openai-responses", "openai-chat", "anthropic", "gemini"]
        names = {"openai-responses": "p-resp", "openai-chat": "p-chat",
                 "anthropic": "p-anth", "gemini": "p-gem"}
        providers = []
        for d in dialects:
            f = env.fake(names[d], d)
            p = {"name": names[d], "dialect": d, "base_url": f.base_url,
                 "api_key": f"sk-{names[d]}", "models": [MODEL, "gpt-5.1-codex"],
                 "priority": 5}
            if d != "openai-responses":
                p["model_map"] = {"*": UPSTREAM_MODEL[d]}
            providers.append(p)
        # errors: a failing provider pinned alone, and a fallback pair on model gpt-6-sol
        fail = env.fake("p-fail", "openai-responses")
        providers.append({"name": "p-fail", "dialect": "openai-responses",
                          "base_url": fail.base_url, "api_key": "sk-fail",
                          "models": ["gpt-6-luna"], "priority": 1})
        fb1 = env.fake("p-fb1", "openai-responses")
        fb2 = env.fake("p-fb2", "anthropic")
        providers.append({"name": "p-fb1", "dialect": "openai-responses",
                          "base_url": fb1.base_url, "api_key": "sk-fb1",
                          "models": ["gpt-6-sol"], "priority": 1})
        providers.append({"name": "p-fb2", "dialect": "anthropic", "base_url": fb2.base_url,
                          "api_key": "sk-fb2", "models": ["gpt-6-sol"], "priority": 2,
                          "model_map": {"*": "claude-sonnet-4-5"}})
        env.start_gateway(providers)
        written = env.connect()
        check("connect-codex", 'model_provider = "codeswitch"' in written
              and f'base_url = "http://127.0.0.1:{PORT}/v1"' in written
              and 'wire_api = "responses"' in written,
              "connect wrote: " + " | ".join(written.strip().splitlines()))

        for d in dialects:
            f = env.fakes[names[d]]
            tag = d
            if want(f"text-{tag}"):
                f.clear()
                rc, ev, err, dt = env.codex("Say hello", pin=names[d])
                msgs = [i["text"] for i in items(ev, "agent_message")]
                u = usage(ev) or {}
                exp = EXPECTED_USAGE[d]
                bad_u = {k: (u.get(k), v) for k, v in exp.items() if u.get(k) != v}
                req = f.requests[0] if f.requests else None
                streamed = req is not None and (bool((req.json or {}).get("stream"))
                                                or "streamGenerateContent" in req.path)
                if req is not None:
                    save_capture(version, f"text-{tag}-upstream", req,
                                 f"what the gateway sent to the {d} provider for `codex exec "
                                 "'Say hello'`")
                check(f"text-{tag}", rc == 0 and msgs == [DEFAULT_TEXT[d]] and not bad_u
                      and streamed and len(f.requests) == 1,
                      f"rc={rc} {dt:.1f}s upstream_reqs={len(f.requests)} streamed={streamed} "
                      f"msg={msgs!r:.80} usage={u} usage_mismatch={bad_u} "
                      f"errors={errors(ev)[:2]} stderr={err.strip()[-300:]!r}")
                # raw replay of Codex's own body through the gateway: completed id + usage
                if req is not None and d == "openai-responses":
                    env.codex_body = req.json
            if want(f"completed-{tag}") and getattr(env, "codex_body", None):
                f.clear()
                evs = raw_stream(env.codex_body, names[d])
                kinds = [k for k, _ in evs]
                comp = [x for k, x in evs if k == "response.completed"]
                ok = bool(comp)
                ev_text = ""
                if comp:
                    r = comp[0]["response"]
                    uu = r.get("usage") or {}
                    ok = (str(r.get("id", "")).startswith("resp") and r.get("status") ==
                          "completed" and all(k in uu for k in ("input_tokens", "output_tokens",
                                                                 "total_tokens"))
                          and "response.output_item.done" in kinds
                          and kinds[0] == "response.created")
                    ev_text = (f"id={r.get('id')} status={r.get('status')} usage={uu} "
                               f"output_types={[o.get('type') for o in r.get('output', [])]}")
                check(f"completed-{tag}", ok,
                      f"events={len(kinds)} first={kinds[:1]} last={kinds[-1:]} {ev_text}")
            if want(f"tool-{tag}"):
                f.clear()
                rc, ev, err, dt = env.codex(
                    "RUN_TOOL: run the command the tool call gives", "-s", "read-only",
                    pin=names[d])
                msgs = [i["text"] for i in items(ev, "agent_message")]
                cmds = items(ev, "command_execution")
                reas = items(ev, "reasoning")
                second = f.requests[1].json if len(f.requests) > 1 else {}
                echo = reasoning_echo(d, second) if second else None
                if len(f.requests) > 1:
                    save_capture(version, f"tool-{tag}-turn2-upstream", f.requests[1],
                                 "2nd upstream request of the exec_command round trip "
                                 "(carries the tool output and the reasoning echo)")
                ok = (rc == 0 and len(f.requests) == 2 and f.decisions[:2] == ["tool", "final"]
                      and any(CMD_OUT in (c.get("aggregated_output") or "") for c in cmds)
                      and any(m.startswith("ROUNDTRIP-DONE") and CMD_OUT in m for m in msgs)
                      and echo is not None)
                if d == "openai-chat":  # no reasoning echo field in Chat (see report)
                    ok = ok or (echo is None and rc == 0 and len(f.requests) == 2
                                and any(m.startswith("ROUNDTRIP-DONE") for m in msgs))
                check(f"tool-{tag}", ok,
                      f"rc={rc} {dt:.1f}s upstream_reqs={len(f.requests)} "
                      f"decisions={f.decisions} cmds={_cmds(cmds)} "
                      f"reasoning_items={[r.get('text', '')[:40] for r in reas]} "
                      f"reasoning_echo_upstream={echo} msgs={msgs!r:.120} "
                      f"errors={errors(ev)[:2]} stderr={err.strip()[-300:]!r}")
            if want(f"patch-{tag}"):
                f.clear()
                rc, ev, err, dt = env.codex(
                    "RUN_PATCH: apply the patch the tool call gives", "-s", "workspace-write",
                    pin=names[d])
                msgs = [i["text"] for i in items(ev, "agent_message")]
                changes = items(ev, "file_change")
                target = os.path.join(env.last_work, "cs_patch.txt")
                content = Path(target).read_text() if os.path.exists(target) else None
                if len(f.requests) > 1:
                    save_capture(version, f"patch-{tag}-turn2-upstream", f.requests[1],
                                 "2nd upstream request of the apply_patch round trip")
                ok = (rc == 0 and len(f.requests) == 2 and content == "patched-by-codeswitch\n"
                      and any(m.startswith("ROUNDTRIP-DONE") for m in msgs))
                check(f"patch-{tag}", ok,
                      f"rc={rc} {dt:.1f}s upstream_reqs={len(f.requests)} decisions={f.decisions} "
                      f"file={content!r} file_change={[c.get('changes') for c in changes]} "
                      f"msgs={msgs!r:.120} errors={errors(ev)[:2]} stderr={err.strip()[-300:]!r}")

        # ---- a tool from Codex's `namespace` group (multi_agent_v1, sent for models without
        # bundled metadata) called through a translated provider: Codex must get the call
        # back with "namespace", or it answers "unsupported call: close_agent"
        if want("namespace-anthropic"):
            f = env.fakes["p-anth"]
            f.clear()
            rc, ev, err, dt = env.codex("RUN_NS: call close_agent", pin="p-anth",
                                        model="gpt-5.1-codex")
            second = json.dumps(f.requests[1].json) if len(f.requests) > 1 else ""
            seen = second[-120:]
            if "unsupported call" in second:
                seen = "Codex answered 'unsupported call: close_agent'"
            elif "invalid agent id" in second:
                seen = "the call reached Codex's close_agent handler"
            check("namespace-anthropic", rc == 0 and "invalid agent id" in second
                  and "unsupported call" not in second,
                  f"rc={rc} upstream_reqs={len(f.requests)} tool result: {seen}")

        # ---- what Codex itself sends (pointed straight at the Responses fake, no gateway)
        if want("direct-capture"):
            f = env.fakes["p-resp"]
            f.clear()
            rc, ev, err, dt = env.codex(
                "RUN_TOOL: run the command the tool call gives", "-s", "read-only", "-c",
                f'model_providers.codeswitch.base_url="{f.base_url}"')
            paths = []
            for i, rq in enumerate(f.requests[:2]):
                paths.append(save_capture(version, f"client-turn{i + 1}-direct", rq,
                                          "exactly what Codex sends (headers + body), captured "
                                          "with Codex pointed straight at the fake Responses "
                                          "provider; turn 2 carries reasoning.encrypted_content "
                                          "and function_call_output"))
            check("direct-capture", rc == 0 and len(paths) == 2,
                  f"rc={rc} saved={[os.path.basename(p) for p in paths]}")

        # ---- errors
        def err_case(name: str, behavior: Behavior, expect_retries: bool) -> None:
            if not want(name):
                return
            fail.clear()
            fail.default = behavior
            rc, ev, err, dt = env.codex("Say hello", model="gpt-6-luna", timeout=400)
            fail.default = Behavior()
            msgs = errors(ev)
            n = len(fail.requests)
            code = str(behavior.status)
            ok = rc != 0 and (n > 1 if expect_retries else n == 1) and any(
                "fake upstream" in m or code in m for m in msgs)
            check(name, ok, f"rc={rc} {dt:.1f}s upstream_reqs={n} codex_errors="
                  f"{[m[:200] for m in msgs][-3:]} stderr_tail={err.strip()[-200:]!r}")

        # Every provider failed (here the only one): the gateway already tried it, so the
        # error is final (issue 17; Codex gets it as a 400 with x-should-retry: false): one
        # upstream call, the message shown. (Codex 0.171 itself retries a 429 with
        # Retry-After and a 503, which it did before the gateway made these final.)
        err_case("error-429", Behavior(status=429), False)
        err_case("error-429-retry-after", Behavior(status=429, headers={"retry-after": "1"}),
                 False)
        err_case("error-503", Behavior(status=503), False)
        err_case("error-400", Behavior(status=400), False)

        if want("fallback-429"):
            fb1.clear()
            fb2.clear()
            fb1.default = Behavior(status=429, headers={"retry-after": "1"})
            rc, ev, err, dt = env.codex("Say hello", model="gpt-6-sol")
            fb1.default = Behavior()
            msgs = [i["text"] for i in items(ev, "agent_message")]
            check("fallback-429", rc == 0 and len(fb1.requests) == 1 and len(fb2.requests) == 1
                  and msgs == [DEFAULT_TEXT["anthropic"]],
                  f"rc={rc} p1_reqs={len(fb1.requests)} p2_reqs={len(fb2.requests)} "
                  f"msg={msgs!r:.80} errors={errors(ev)[:2]}")
        if want("fallback-instream"):
            time.sleep(2)  # let p-fb1's Retry-After cool-down from fallback-429 pass
            fb1.clear()
            fb2.clear()
            fb1.push(Behavior(stream_error_after=2))
            rc, ev, err, dt = env.codex("Say hello", model="gpt-6-sol")
            msgs = [i["text"] for i in items(ev, "agent_message")]
            check("fallback-instream", rc == 0 and len(fb1.requests) == 1
                  and len(fb2.requests) == 1 and msgs == [DEFAULT_TEXT["anthropic"]],
                  f"rc={rc} p1_reqs={len(fb1.requests)} p2_reqs={len(fb2.requests)} "
                  f"msg={msgs!r:.80} errors={errors(ev)[:2]}")
        if want("midstream-error"):
            # error after content: gateway can't fall back; Codex sees response.failed
            f = env.fakes["p-anth"]
            f.clear()
            f.push(Behavior(stream_error_after=6))
            rc, ev, err, dt = env.codex("Say hello", pin="p-anth", timeout=400)
            msgs = [i["text"] for i in items(ev, "agent_message")]
            check("midstream-error", len(f.requests) >= 2 and rc == 0
                  and msgs[-1:] == [DEFAULT_TEXT["anthropic"]],
                  f"rc={rc} {dt:.1f}s upstream_reqs={len(f.requests)} msgs={msgs!r:.120} "
                  f"errors={[m[:160] for m in errors(ev)][:3]}")
        gw = f"http://127.0.0.1:{PORT}"
        if want("lost-424"):
            # the router that took the request is killed while the provider holds the call: it
            # may have run upstream, Codex must not send it again. The edge answers 400 to Codex
            # (424 + x-should-retry: false to the others): Codex 0.171 retries a 424 (every
            # status but 400, 401 and 429), and ran the request twice with a 424
            fail.clear()
            fail.push(Behavior(hang=True))
            b0 = faults.answered(gw, "openai-responses")
            t, info = faults.kill_router_on_call(env.cs_home, fail, 1)
            rc, ev, err, dt = env.codex("Say hello", model="gpt-6-luna", timeout=400)
            t.join(10)
            got = faults.since(b0, faults.answered(gw, "openai-responses"))
            msgs = errors(ev)
            check("lost-424", got == {400: 1} and len(fail.requests) == 1 and rc != 0
                  and any("billed twice" in m for m in msgs),
                  f"gateway answers={got} rc={rc} {dt:.1f}s codex_errors="
                  f"{[m[:220] for m in msgs][-2:]}" + (f" {info['error']}" if "error" in info
                                                       else ""))
            faults.wait_ready(gw, env.cs_home, info.get("pid"))
        if want("final-503"):
            # no router takes the request (stopped): the edge answers 503 after the pickup
            # timeout, every time; Codex retries, then shows it
            fail.clear()
            b0 = faults.answered(gw, "openai-responses")
            with faults.stopped_router(env.cs_home):
                rc, ev, err, dt = env.codex("Say hello", model="gpt-6-luna", timeout=900)
            got = faults.since(b0, faults.answered(gw, "openai-responses"))
            msgs = errors(ev)
            n = sum(got.values())
            check("final-503", rc != 0 and set(got) == {503} and n > 1 and not fail.requests
                  and any("no router available" in m for m in msgs),
                  f"gateway answers={got} (retries={n - 1}) rc={rc} {dt:.1f}s codex_errors="
                  f"{[m[:220] for m in msgs][-2:]}")
            faults.wait_ready(gw, env.cs_home, None)
    finally:
        env.stop()
    log("\nSUMMARY")
    for n, ok, _ in RESULTS:
        log(f"  {'PASS' if ok else 'FAIL'}  {n}")
    return 0 if all(ok for _, ok, _ in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
