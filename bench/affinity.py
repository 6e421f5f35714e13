"""Session affinity and the providers' prompt caches: cache-read tokens of one scripted
20-turn session across 3 round-robin providers, with and without affinity.

    .venv/bin/python bench/affinity.py [--turns 20] [--system-tokens 6000] [--sessions 1]

Each run starts `codeswitch up` (its own home and NATS) with three Anthropic providers of one
priority level (round-robin), `[routing] affinity = false` then `true`, in front of a fake
upstream that plays the three providers. The fake keeps a prompt cache per provider, as
Anthropic's does with Claude Code's cache_control on the system prompt and the last message:
a request whose blocks (system, then messages) start with a prefix this provider has seen
reads that prefix from the cache (`cache_read_input_tokens`), writes the rest
(`cache_creation_input_tokens`), and the cache then holds every prefix of it. Tokens are
counted as JSON characters / 4. Every turn resends the whole history (as the coding CLIs do):
the user's message, then the previous answer.

The session is recognised as Claude Code does it (`metadata.user_id` with a session id, and
`x-claude-code-session-id`), so nothing here is special to the bench.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import uvicorn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _procs import free_port, stop_process  # noqa: E402

PROVIDERS = ("p1", "p2", "p3")
MODEL = "claude-sonnet-4-5"


def _tokens(block: Any) -> int:
    return max(1, len(json.dumps(block, separators=(",", ":"))) // 4)


class CachingFake:
    """Three Anthropic providers (``/p1``, ``/p2``, ``/p3``) with a prompt cache each."""

    def __init__(self) -> None:
        self.caches: dict[str, set[str]] = {p: set() for p in PROVIDERS}
        self.served: Counter[str] = Counter()
        self.port = free_port()

    def reset(self) -> None:
        for cache in self.caches.values():
            cache.clear()
        self.served.clear()

    def usage(self, provider: str, body: dict[str, Any]) -> dict[str, int]:
        blocks = [body.get("system") or "", *body.get("messages", [])]
        cache = self.caches[provider]
        prefix = hashlib.sha256()
        hashes, sizes = [], []
        for block in blocks:
            prefix.update(json.dumps(block, sort_keys=True).encode())
            hashes.append(prefix.hexdigest())
            sizes.append(_tokens(block))
        hit = max((i + 1 for i, h in enumerate(hashes) if h in cache), default=0)
        cache.update(hashes)
        return {"input_tokens": 3, "cache_read_input_tokens": sum(sizes[:hit]),
                "cache_creation_input_tokens": sum(sizes[hit:]), "output_tokens": 50}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        provider = scope["path"].strip("/").split("/", 1)[0]
        if provider not in self.caches or not scope["path"].endswith("/v1/messages"):
            await _respond(send, 404, {"type": "error", "error": {"type": "not_found_error",
                                                                  "message": scope["path"]}})
            return
        body = json.loads(b"".join(chunks))
        self.served[provider] += 1
        await _respond(send, 200, {
            "id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant",
            "model": body.get("model"), "stop_reason": "end_turn", "stop_sequence": None,
            "content": [{"type": "text", "text": f"answer {self.served[provider]} from "
                                                 f"{provider}: " + "ok " * 40}],
            "usage": self.usage(provider, body)})

    def start(self) -> CachingFake:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.01)
        return self


async def _respond(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _config(fake: CachingFake, affinity: bool) -> str:
    out = ["[routing]", 'strategy = "round-robin"', f"affinity = {str(affinity).lower()}", ""]
    for name in PROVIDERS:
        out += ["[[providers]]", f'name = "{name}"', 'dialect = "anthropic"',
                f'base_url = "http://127.0.0.1:{fake.port}/{name}"', 'api_key = "sk-fake"',
                'models = ["claude-*"]', ""]
    return "\n".join(out)


def _system(tokens: int) -> list[dict[str, Any]]:
    text = " ".join(f"rule-{i}: keep the code tidy." for i in range(tokens // 8))
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


def run_session(url: str, turns: int, system: list[dict[str, Any]],
                session: str) -> list[dict[str, int]]:
    headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01",
               "x-claude-code-session-id": session, "user-agent": "claude-cli/2.1.197"}
    user_id = json.dumps({"device_id": "bench", "account_uuid": "", "session_id": session})
    messages: list[dict[str, Any]] = []
    usages = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for turn in range(turns):
            messages.append({"role": "user", "content": [{"type": "text", "text": (
                f"turn {turn}: please change function f{turn} " + "and explain why " * 30),
                "cache_control": {"type": "ephemeral"}}]})
            r = c.post("/v1/messages", headers=headers, json={
                "model": MODEL, "max_tokens": 256, "system": system, "messages": messages,
                "metadata": {"user_id": user_id}})
            r.raise_for_status()
            answer = r.json()
            usages.append(answer["usage"])
            messages.append({"role": "assistant", "content": answer["content"]})
            for block in messages[-2]["content"]:  # the breakpoint moves to the new message
                block.pop("cache_control", None)
    return usages


def gateway(tmp: Path, cfg: str) -> tuple[subprocess.Popen[bytes], str]:
    (tmp / "codeswitch.toml").write_text(cfg)
    port = free_port()
    exe = shutil.which("codeswitch", path=str(Path(sys.executable).parent)) or "codeswitch"
    proc = subprocess.Popen(
        [exe, "up", "--home", str(tmp / "home"), "--config", str(tmp / "codeswitch.toml"),
         "--port", str(port)], stdout=(tmp / "gateway.log").open("wb"),
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "CODESWITCH_DEVICE": "bench"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readiness", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop_process(proc, signal.SIGINT)
    raise SystemExit(f"gateway not ready; see {tmp / 'gateway.log'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--system-tokens", type=int, default=6000)
    ap.add_argument("--sessions", type=int, default=1, help="sessions, one after the other")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    fake = CachingFake().start()
    system = _system(a.system_tokens)
    results = {}
    for affinity in (False, True):
        fake.reset()
        tmp = Path(tempfile.mkdtemp(prefix="cs-affinity-"))
        proc, url = gateway(tmp, _config(fake, affinity))
        try:
            usages = [u for n in range(a.sessions)
                      for u in run_session(url, a.turns, system, str(uuid.uuid4()))]
        finally:
            stop_process(proc, signal.SIGINT, grace=10)
            shutil.rmtree(tmp, ignore_errors=True)
        read = sum(u["cache_read_input_tokens"] for u in usages)
        write = sum(u["cache_creation_input_tokens"] for u in usages)
        fresh = sum(u["input_tokens"] for u in usages)
        total = read + write + fresh
        # Anthropic's multipliers: cache reads 0.1x the input price, 5-minute writes 1.25x
        results["on" if affinity else "off"] = {
            "requests": len(usages), "per_provider": dict(sorted(fake.served.items())),
            "input_tokens_total": total, "cache_read": read, "cache_write": write,
            "hit_ratio": read / total if total else 0.0,
            "input_cost_units": (fresh + 0.1 * read + 1.25 * write) / 1e6}
    if a.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{a.sessions} session(s) x {a.turns} turns, system prompt ~{a.system_tokens} tokens, "
          "3 providers round-robin")
    print(f"{'affinity':9} {'per provider':24} {'prompt tokens':>13} {'cache read':>11} "
          f"{'cache write':>11} {'hit':>6} {'input cost (x$/Mtok)':>21}")
    for mode, r in results.items():
        print(f"{mode:9} {json.dumps(r['per_provider']):24} {r['input_tokens_total']:>13,} "
              f"{r['cache_read']:>11,} {r['cache_write']:>11,} {r['hit_ratio']:>6.1%} "
              f"{r['input_cost_units']:>21.3f}")


if __name__ == "__main__":
    main()
