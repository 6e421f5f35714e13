"""The real Claude Code, Codex CLI and Gemini CLI against a gateway with users: what each does
with a key the gateway refuses (unknown: 401; revoked, expired, user disabled, model not
allowed, budget exhausted: 403). For each CLI and case: the exit status, how many requests
reached the edge (a CLI that retries shows more than 1), the time, and whether the gateway's
message is shown.

    .venv/bin/python bench/real_clients/users.py            # all three CLIs
    .venv/bin/python bench/real_clients/users.py claude     # or codex, gemini

The CLIs come from /tmp/realcli/{claude,codex,gemini} (installed there by the other scripts of
bench/real_clients/, or `npm i --prefix /tmp/realcli/codex @openai/codex`...). The gateway is
`codeswitch up` with a config file holding the users and keys ([[users]], [[keys]] with env:
secrets), on its own NATS and ports, with the fake upstream of tests/fakes. Prints PASS/FAIL per
CLI and case: PASS = the CLI failed, after one request, showing the gateway's reason.

Case ``rate`` (rate limits): a key with ``rpm = 2``, its window filled by direct requests just
before the CLI starts, so the CLI's first request gets 429 with ``retry-after`` (up to 60 s)
in its dialect. PASS = the CLI waited and retried on its own and was served (exit 0), with at
least one 429 counted at the edge.

    .venv/bin/python bench/real_clients/users.py claude rate    # one CLI, one case
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from runtime.natsd import EmbeddedNats  # noqa: E402
from tests.fakes.upstream import FakeUpstream  # noqa: E402

VENV = REPO / ".venv" / "bin"
CLIS = {n: Path(os.environ.get(f"{n.upper()}_DIR", f"/tmp/realcli/{n}")) / "node_modules" /
        ".bin" / n for n in ("claude", "codex", "gemini")}
MODELS = {"claude": "claude-sonnet-4-5", "codex": "gpt-5.5", "gemini": "gemini-2.5-flash"}
DIALECT = {"claude": "anthropic", "codex": "openai-responses", "gemini": "gemini"}
# case -> what the message must say
CASES = {"unknown": "invalid API key", "revoked": "was revoked", "expired": "expired at",
         "disabled": "is disabled", "model": "may not use model",
         "budget": "budget exhausted"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class World:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="cs-users-real-"))
        self.home = self.tmp / "home"
        self.cs_home = self.tmp / "cs-home"
        self.work = self.tmp / "work"
        for p in (self.home, self.cs_home, self.work):
            p.mkdir(parents=True)
        self.fakes = {d: FakeUpstream(d).start() for d in set(DIALECT.values())}
        self.nats = EmbeddedNats(self.tmp / "nats", log_file=self.tmp / "nats.log")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secrets = {name: "cs-" + os.urandom(24).hex() for name in
                        ("ok", "revoked", "expired", "disabled", "model", "rate",
                         "budget")}
        self.gw: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ANTHROPIC_", "CLAUDE_", "GEMINI_", "GOOGLE_", "OPENAI_",
                                    "CODEX_", "CODESWITCH_"))}
        env.update(HOME=str(self.home), CODESWITCH_HOME=str(self.cs_home), NO_COLOR="1",
                   CODESWITCH_NATS_URL=self.nats.url)
        env.update({f"KEY_{n.upper()}": s for n, s in self.secrets.items()})
        return env

    def start(self) -> None:
        self.nats.start()
        cfg = [f"[gateway]\nport = {self.port}\n"]
        for d, fake in self.fakes.items():
            cfg += ["[[providers]]", f'name = "{d.replace("openai-", "")}"',
                    f'dialect = "{d}"', f'base_url = "{fake.base_url}"',
                    'api_key = "fake-provider-key"', ""]
        cfg += ['[[users]]\nname = "alice"\n', '[[users]]\nname = "carol"\nenabled = false\n']
        keys = {"ok": ("alice", ""), "revoked": ("alice", ""),
                "expired": ("alice", "expires = 2020-01-01\n"),
                "disabled": ("carol", ""), "model": ("alice", 'models = ["none-*"]\n'),
                "rate": ("alice", "rpm = 2\n"),
                "budget": ("alice", 'budget = "50tokens/day"\n')}
        for name, (user, extra) in keys.items():
            cfg.append(f'[[keys]]\nname = "{name}"\nuser = "{user}"\n'
                       f'secret = "env:KEY_{name.upper()}"\n{extra}')
        (self.tmp / "codeswitch.toml").write_text("\n".join(cfg))
        self.gw = subprocess.Popen(
            [str(VENV / "codeswitch"), "up", "--port", str(self.port), "--config",
             str(self.tmp / "codeswitch.toml"), "--nats-url", self.nats.url, "--grace", "2"],
            env=self.env(), stdout=open(self.tmp / "gateway.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/readiness", timeout=1):
                    break
            except OSError:
                if self.gw.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("gateway did not start: " +
                                     (self.tmp / "gateway.log").read_text()[-2000:]) from None
                time.sleep(0.25)
        self.cs("key", "revoke", "alice/revoked")
        self.spend_budget()
        time.sleep(0.2)
        for client in ("codex", "gemini"):
            self.cs("connect", client, "--base-url", self.url, "--key", self.secrets["ok"])
        codex_cfg = self.home / ".codex" / "config.toml"
        with codex_cfg.open("a") as fh:
            fh.write("\n[analytics]\nenabled = false\n\n[features]\nplugins = false\n")
        gemini = self.home / ".gemini" / "settings.json"
        s = json.loads(gemini.read_text())
        s.setdefault("privacy", {})["usageStatisticsEnabled"] = False
        s["telemetry"] = {"enabled": False}
        s.setdefault("general", {}).update(enableAutoUpdate=False,
                                            enableAutoUpdateNotification=False)
        gemini.write_text(json.dumps(s))

    def spend_budget(self) -> None:
        """One request with the key "budget" (50 tokens a day): the fake's answer uses more,
        so the key's day is spent once the quota worker has folded it."""
        req = urllib.request.Request(
            self.url + "/v1/messages", method="POST", data=json.dumps(
                {"model": MODELS["claude"], "max_tokens": 16,
                 "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"x-api-key": self.secrets["budget"], "anthropic-version": "2023-06-01",
                     "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        deadline = time.monotonic() + 10
        while True:
            rows = json.loads(self.cs("quota", "show", "--user", "alice", "--json"))
            if any(r["key"] == "budget" and r["exhausted"] for r in rows):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the budget key was never spent: {rows}")
            time.sleep(0.1)

    def cs(self, *args: str) -> str:
        r = subprocess.run([str(VENV / "codeswitch"), *args], env=self.env(),
                           capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise RuntimeError(f"codeswitch {' '.join(args)}: {r.stdout}{r.stderr}")
        return r.stdout

    def refused(self) -> float:
        """Requests the edge refused (400 for Codex, 401, 403) so far (its /metrics)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(m.group(1)) for m in re.finditer(
            r'codeswitch_requests_total\{[^}]*status="40[013]"\} ([0-9.]+)', text))

    def rate_limited(self) -> float:
        """Requests the edge answered 429 so far."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(m.group(1)) for m in re.finditer(
            r'codeswitch_requests_total\{[^}]*status="429"\} ([0-9.]+)', text))

    def fill_window(self, key: str) -> int:
        """Direct requests with ``key`` until the gateway answers 429: its retry-after."""
        body = json.dumps({"model": "gpt-5.5", "messages": [{"role": "user", "content": "x"}]})
        for _ in range(10):
            req = urllib.request.Request(self.url + "/v1/chat/completions", body.encode(),
                                         {"authorization": f"Bearer {key}",
                                          "content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30):
                    continue
            except urllib.error.HTTPError as exc:
                if exc.code == 429:
                    return int(exc.headers["retry-after"])
                raise
        raise RuntimeError("no 429 after 10 requests")

    def run(self, client: str, key: str) -> tuple[int, str, float]:
        env = self.env()
        if client == "claude":
            env.update(ANTHROPIC_BASE_URL=self.url, ANTHROPIC_AUTH_TOKEN=key,
                       CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_TELEMETRY="1",
                       DISABLE_AUTOUPDATER="1", DISABLE_ERROR_REPORTING="1")
            argv = [str(CLIS[client]), "-p", "Say hello", "--model", MODELS[client]]
        elif client == "codex":
            env.update(CODEX_HOME=str(self.home / ".codex"), CODESWITCH_API_KEY=key)
            self._env_file(self.home / ".codex" / ".env", "CODESWITCH_API_KEY", key)
            argv = [str(CLIS[client]), "exec", "--skip-git-repo-check", "-m", MODELS[client],
                    "-c", "check_for_update_on_startup=false", "-C", str(self.work),
                    "Say hello"]
        else:
            env.update(GEMINI_API_KEY=key, GOOGLE_GEMINI_BASE_URL=self.url,
                       GEMINI_CLI_TRUST_WORKSPACE="true")
            self._env_file(self.home / ".gemini" / ".env", "GEMINI_API_KEY", key)
            argv = [str(CLIS[client]), "-p", "Say hello", "-m", MODELS[client]]
        t0 = time.monotonic()
        try:
            r = subprocess.run(argv, env=env, cwd=self.work, capture_output=True, text=True,
                               timeout=300, stdin=subprocess.DEVNULL)
            rc, out = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out = -9, f"timed out: {exc.stdout!r} {exc.stderr!r}"
        return rc, out, time.monotonic() - t0

    @staticmethod
    def _env_file(path: Path, name: str, value: str) -> None:
        """The key `codeswitch connect` wrote into the CLI's .env (which wins over the
        environment for Codex) replaced by this run's."""
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(name + "=")]
        path.write_text("\n".join([*lines, f"{name}={value}"]) + "\n")

    def stop(self) -> None:
        if self.gw is not None and self.gw.poll() is None:
            os.killpg(self.gw.pid, signal.SIGTERM)
            try:
                self.gw.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.gw.pid, signal.SIGKILL)
        self.nats.stop()
        for f in self.fakes.values():
            f.stop()
        if os.environ.get("CS_KEEP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)


def version(client: str) -> str:
    r = subprocess.run([str(CLIS[client]), "--version"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "HOME": tempfile.mkdtemp()})
    return (r.stdout.strip().split() or ["?"])[-1 if client == "codex" else 0]


def main(argv: list[str]) -> int:
    cases = [a for a in argv if a in CASES or a == "rate"] or [*CASES, "rate"]
    argv = [a for a in argv if a in CLIS]
    clients = [c for c in (argv or list(CLIS)) if CLIS[c].exists()]
    if not clients:
        print("no CLI found under /tmp/realcli/: install them first (see the docstring)")
        return 2
    world = World()
    failed = 0
    try:
        world.start()
        for client in clients:
            print(f"{client} {version(client)}")
            rc, out, took = world.run(client, world.secrets["ok"])
            served = "served" if rc == 0 else f"NOT served: {out[-300:]!r}"
            print(f"  ok        rc={rc} {took:5.1f}s (a valid key: {served})")
            for case, words in CASES.items():
                if case not in cases:
                    continue
                before = world.refused()
                key = "cs-" + "0" * 48 if case == "unknown" else world.secrets[case]
                rc, out, took = world.run(client, key)
                time.sleep(0.2)
                tries = world.refused() - before
                shown = words in out
                ok = rc != 0 and tries == 1 and shown
                failed += not ok
                line = next((ln for ln in out.splitlines() if words in ln), out[-200:])
                print(f"  {'PASS' if ok else 'FAIL'} {case:9} rc={rc} requests={tries:g} "
                      f"{took:5.1f}s message shown={shown}: {line.strip()[:160]}")
            if "rate" in cases:
                retry_after = world.fill_window(world.secrets["rate"])
                before = world.rate_limited()
                rc, out, took = world.run(client, world.secrets["rate"])
                time.sleep(0.2)
                limited = world.rate_limited() - before
                ok = rc == 0 and limited >= 1
                failed += not ok
                line = next((ln for ln in out.splitlines() if "rate limit" in ln.lower()
                             or "429" in ln), out.strip().splitlines()[-1] if out.strip()
                            else "")
                print(f"  {'PASS' if ok else 'FAIL'} rate      rc={rc} 429s={limited:g} "
                      f"{took:5.1f}s (retry-after {retry_after} s when it started): "
                      f"{line.strip()[:200]}")
                if os.environ.get("CS_SHOW") == "1":
                    print(out[-3000:])
    finally:
        world.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
