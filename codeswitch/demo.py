"""The demo provider: a tiny local upstream that ``codeswitch up --demo`` starts, so the CLIs,
the stats, the alerts and the log can be tried in the first minute, with no key and no network.

It is a real upstream, not a shortcut in the router: the supervisor runs it as one more
supervised process (``python -m codeswitch.demo --port N``, stdlib only, ~15 MB) and ``up``
registers it as the provider ``demo`` (source ``demo``, every model, priority 1000: behind any
real provider). The router calls it like any other provider, so a request to it goes through
the real path: the edge, the work queue, the router, the translator (it speaks the Anthropic
Messages API; OpenAI Chat, Responses and Gemini clients are translated to it and back), the
facts, the ledger, the alerts. Without ``--demo`` the provider is removed on ``up``: it is
never chosen unless enabled.

What it answers, for any model name: a text that says it is the demo (and echoes the user's
last words), streamed or whole, with usage (the request's bytes / 4 as input tokens); when
the last user message mentions "tool" and tools are offered, a call of the first shell-like
tool (``echo codeswitch demo tool call``) or of the first tool, with arguments made from its
schema; after a tool result, a text quoting it. ``/v1/messages/count_tokens`` and
``/v1/models`` are answered too.

``reply`` and ``sse_events`` are pure (tested without a server).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DEMO_MODEL", "DEMO_NAME", "DEMO_PRIORITY", "demo_provider", "main", "reply",
           "sse_events"]

DEMO_NAME = "demo"
DEMO_PRIORITY = 1000
DEMO_MODEL = "codeswitch-demo"
_TAG = "[codeswitch demo]"
_SHELL_TOOLS = ("Bash", "bash", "shell", "run_shell_command", "exec_command", "local_shell",
                "container.exec")
_TOOL_COMMAND = "echo codeswitch demo tool call"
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
# pause between two streamed pieces: a stream that looks like one, still under 0.1 s
_STREAM_PAUSE_S = 0.01


def demo_provider(port: int, host: str = "127.0.0.1") -> Any:
    """The provider ``up --demo`` registers (every model, behind the real providers)."""
    from schemas.config import ProviderConfig

    return ProviderConfig(name=DEMO_NAME, dialect="anthropic", base_url=f"http://{host}:{port}",
                          api_key="", models=[], priority=DEMO_PRIORITY, source="demo")


def _text_of(content: Any) -> str:
    """The user's words: text blocks, without the <system-reminder> blocks Claude Code adds
    (they mention tools; the demo must answer what the person typed)."""
    if isinstance(content, str):
        return _REMINDER.sub("", content)
    if isinstance(content, list):
        return " ".join(_REMINDER.sub("", b.get("text", "")) for b in content
                        if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _tool_results(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    out = []
    for b in content:
        if isinstance(b, dict) and b.get("type") == "tool_result":
            c = b.get("content")
            out.append(c if isinstance(c, str) else _text_of(c))
    return out


def _arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a tool from its JSON schema: its required properties, filled in."""
    if not isinstance(schema, dict):
        return {}
    got = schema.get("properties")
    props: dict[str, Any] = got if isinstance(got, dict) else {}
    args: dict[str, Any] = {}
    for name in schema.get("required") or []:
        found = props.get(name)
        spec: dict[str, Any] = found if isinstance(found, dict) else {}
        kind = spec.get("type")
        if "command" in name or name == "cmd":
            args[name] = ["bash", "-lc", _TOOL_COMMAND] if kind == "array" else _TOOL_COMMAND
        elif kind in ("integer", "number"):
            args[name] = 1
        elif kind == "boolean":
            args[name] = False
        elif kind == "array":
            args[name] = []
        elif kind == "object":
            args[name] = {}
        else:
            args[name] = "demo"
    return args


def _pick_tool(tools: list[Any]) -> dict[str, Any] | None:
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    for wanted in _SHELL_TOOLS:
        for t in named:
            if t["name"] == wanted:
                return t
    return named[0] if named else None


def reply(doc: dict[str, Any], body_size: int) -> dict[str, Any]:
    """The Anthropic Messages answer to ``doc`` (a request), as a whole message."""
    model = str(doc.get("model") or DEMO_MODEL)
    got = doc.get("messages")
    messages: list[Any] = got if isinstance(got, list) else []
    # the conversation's turns only: Claude Code 2.1 ends its messages with a "system" one
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") in ("user",
                                                                               "assistant")]
    last = turns[-1] if turns and turns[-1].get("role") == "user" else {}
    said = _text_of(last.get("content")).strip()
    results = _tool_results(last.get("content"))
    tools = doc.get("tools") if isinstance(doc.get("tools"), list) else []
    content: list[dict[str, Any]] = []
    stop = "end_turn"
    if results:
        seen = " ".join(r.strip() for r in results)[:300]
        content.append({"type": "text", "text": f"{_TAG} The tool answered: {seen!r}. That "
                        "was a full tool round trip through the gateway."})
    elif tools and "tool" in said.lower() and (tool := _pick_tool(tools)) is not None:
        content.append({"type": "text", "text": f"{_TAG} Calling the tool {tool['name']} to "
                        "show a tool call."})
        content.append({"type": "tool_use", "id": f"toolu_demo{os.urandom(6).hex()}",
                        "name": tool["name"], "input": _arguments(tool.get("input_schema"))})
        stop = "tool_use"
    else:
        quoted = " ".join(said.split())[:200]
        content.append({"type": "text", "text": (
            f"{_TAG} Hello! This answer comes from codeswitch's built-in demo provider: no "
            f"model was called (you asked for {model!r}), no key, no network. "
            + (f"You said: {quoted!r}. " if quoted else "")
            + "Ask me to use a tool to see a tool call. For real answers, set "
            "ANTHROPIC_API_KEY, OPENAI_API_KEY or GEMINI_API_KEY and restart `codeswitch up`, "
            "or add a provider with `codeswitch provider add`.")})
    out_chars = sum(len(b.get("text", "")) + len(json.dumps(b.get("input", "")))
                    for b in content)
    return {"id": f"msg_demo{os.urandom(8).hex()}", "type": "message", "role": "assistant",
            "model": model, "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": max(1, body_size // 4),
                      "output_tokens": max(1, out_chars // 4)}}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def sse_events(message: dict[str, Any]) -> list[bytes]:
    """The message as Anthropic's stream events: text in a few deltas, a tool call's input as
    ``input_json_delta``, usage in ``message_start`` and ``message_delta``."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None,
             "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}
    events = [_event("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(_event("content_block_start", {
                "type": "content_block_start", "index": i,
                "content_block": {"type": "text", "text": ""}}))
            text = block["text"]
            step = max(1, len(text) // 4)
            for at in range(0, len(text), step):
                events.append(_event("content_block_delta", {
                    "type": "content_block_delta", "index": i,
                    "delta": {"type": "text_delta", "text": text[at:at + step]}}))
        else:
            events.append(_event("content_block_start", {
                "type": "content_block_start", "index": i,
                "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"],
                                  "input": {}}}))
            events.append(_event("content_block_delta", {
                "type": "content_block_delta", "index": i,
                "delta": {"type": "input_json_delta",
                          "partial_json": json.dumps(block["input"])}}))
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(_event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(_event("message_stop", {"type": "message_stop"}))
    return events


def _error(status: int, kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "codeswitch-demo"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.split("?")[0].rstrip("/") == "/v1/models":
            self._send(200, json.dumps({"data": [{
                "type": "model", "id": DEMO_MODEL, "display_name": "codeswitch demo (no model)",
                "created_at": "2026-01-01T00:00:00Z"}], "has_more": False,
                "first_id": DEMO_MODEL, "last_id": DEMO_MODEL}).encode())
            return
        self._send(404, _error(404, "not_found_error", f"demo provider: no {self.path}"))

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            doc = json.loads(raw or b"{}")
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError:
            self._send(400, _error(400, "invalid_request_error", "demo: body is not JSON"))
            return
        path = self.path.split("?")[0]
        if path == "/v1/messages/count_tokens":
            self._send(200, json.dumps({"input_tokens": max(1, len(raw) // 4)}).encode())
            return
        if path != "/v1/messages":
            self._send(404, _error(404, "not_found_error", f"demo provider: no {path}"))
            return
        message = reply(doc, len(raw))
        if not doc.get("stream"):
            self._send(200, json.dumps(message).encode())
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for chunk in sse_events(message):
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
            time.sleep(_STREAM_PAUSE_S)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def serve(host: str, port: int) -> ThreadingHTTPServer:
    """The demo upstream listening (serving on a daemon thread); ``shutdown()`` stops it."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="demo", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codeswitch.demo",
                                     description="codeswitch's demo provider (Anthropic API).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from runtime.process import set_title

    set_title(f"codeswitch demo provider :{args.port}", "codeswitch-demo")
    server = serve(args.host, args.port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
