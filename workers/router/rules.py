"""Route rules, pure: the features of a request and which rule (the first that matches) routes
it. No I/O here; the router (``service.py``) and ``codeswitch route test`` call it.

``Features`` are taken once per request: the cheap ones from the envelope the edge built
(model, client, dialect, user, key, the headers the rules name), the body ones (thinking,
image, tools, subagent, session turn, the input-token estimate) from the document the router
decodes anyway (``attempt.RequestBody.doc``: the same decode a translated attempt uses; a
rule set without body keys never decodes the body). ``compile_rules`` turns the rules into
predicates once (globs into one regular expression per key) when the KV entry changes, so a
request costs a loop over small closures (``match``). ``explain`` says, for ``route test``, why
each rule did or did not match.

What each dialect's body says (checked over the recorded requests in tests/fixtures/clients):

- thinking: Anthropic ``thinking.type`` enabled or adaptive (Claude Code sends adaptive on its
  main turns); OpenAI Chat ``reasoning_effort`` (any but none/minimal) or ``reasoning``;
  Responses ``reasoning.effort`` (any but none/minimal); Gemini
  ``generationConfig.thinkingConfig`` with a budget other than 0, ``includeThoughts`` or a
  ``thinkingLevel``.
- image: an image block anywhere in the input (tool results included): Anthropic
  ``image``, Chat ``image_url``, Responses ``input_image``, Gemini ``inlineData``/``fileData``
  with an ``image/*`` MIME type.
- tools: function tool names, and server tools by their name and type (Anthropic
  ``web_search_20250305`` is ``web_search``; Responses ``web_search``/``web_search_preview``;
  Gemini ``googleSearch`` is ``google_search`` and ``web_search``; Chat ``web_search_options``
  is ``web_search``).
- input tokens: an estimate without a tokenizer: the body's bytes minus inline image data,
  divided by 4, plus 1,600 per image (Anthropic's cost of a large image).
- session turn: ``first`` when the history holds no assistant/model turn yet.
- subagent: Claude Code's subagents (docs/clients.md, "Subagents"): an Anthropic request
  whose first system block (Claude Code's attribution line) says ``cc_is_subagent=true``
  (2.1.197 adds it for every agent but the main session), or, for versions without it, whose
  system prompt is one of Claude Code's agents' (the general-purpose agent "You are an agent
  for Claude Code", Explore's "file search specialist for Claude Code", Plan's "planning
  specialist for Claude Code"). The tool set does not tell: a 2.1.197 subagent has the
  ``Agent`` tool too (22 tools against the main turn's 25).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.routes import RouteMatch, RouteRule, globs

__all__ = [
    "BODY_KEYS",
    "CompiledRule",
    "Features",
    "RuleSet",
    "body_features",
    "compile_rules",
    "estimate_tokens",
    "explain",
    "features",
    "match",
]

# match keys read from the body (the rest come from the envelope)
BODY_KEYS = frozenset({"thinking", "min_input_tokens", "image", "tools", "subagent",
                       "session_turn"})
IMAGE_TOKENS = 1600  # an image's tokens in the estimate (Anthropic: a ~1.15 MP image)
_SUBAGENT_FLAG = "cc_is_subagent=true"
_SUBAGENT_MARKERS = ("You are an agent for Claude Code",
                     "specialist for Claude Code")


@dataclass(slots=True)
class Features:
    """What rules look at, taken once per request."""

    model: str = ""
    client: str = ""
    dialect: str = ""
    user: str = ""
    key: str = ""  # "USER/NAME" of the gateway key, "" without users
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    # from the body (left at their defaults when no rule needs them)
    thinking: bool = False
    input_tokens: int = 0
    image: bool = False
    tools: frozenset[str] = frozenset()
    subagent: bool = False
    first_turn: bool = True


# -- the body ---------------------------------------------------------------------------------

_OFF_EFFORT = ("none", "minimal")


def _thinking(dialect: str, doc: Mapping[str, Any]) -> bool:
    if dialect == "anthropic":
        t = doc.get("thinking")
        return isinstance(t, dict) and t.get("type") in ("enabled", "adaptive")
    if dialect == "openai-chat":
        effort = doc.get("reasoning_effort")
        if isinstance(effort, str):
            return effort not in _OFF_EFFORT
        r = doc.get("reasoning")
        return isinstance(r, dict) and r.get("effort") not in _OFF_EFFORT
    if dialect == "openai-responses":
        r = doc.get("reasoning")
        return isinstance(r, dict) and r.get("effort", "medium") not in _OFF_EFFORT
    if dialect == "gemini":
        gc = doc.get("generationConfig") or doc.get("generation_config")
        tc = gc.get("thinkingConfig") or gc.get("thinking_config") \
            if isinstance(gc, dict) else None
        if not isinstance(tc, dict):
            return False
        budget = tc.get("thinkingBudget", tc.get("thinking_budget"))
        return bool(tc.get("includeThoughts") or tc.get("include_thoughts")
                    or tc.get("thinkingLevel") or tc.get("thinking_level")
                    or (isinstance(budget, int) and budget != 0))
    return False


def _tools(dialect: str, doc: Mapping[str, Any]) -> frozenset[str]:
    names: set[str] = set()
    tools = doc.get("tools")
    for t in tools if isinstance(tools, list) else ():
        if not isinstance(t, dict):
            continue
        if dialect == "gemini":
            for fd in t.get("functionDeclarations") or t.get("function_declarations") or ():
                if isinstance(fd, dict) and isinstance(fd.get("name"), str):
                    names.add(fd["name"])
            if "googleSearch" in t or "google_search" in t or "googleSearchRetrieval" in t:
                names.update(("google_search", "web_search"))
            for other in ("codeExecution", "urlContext"):
                if other in t:
                    names.add(other)
            continue
        kind = t.get("type")
        fn = t.get("function")
        name = fn.get("name") if isinstance(fn, dict) else t.get("name")
        if isinstance(name, str):
            names.add(name)
        if isinstance(kind, str) and kind not in ("function", "custom"):
            names.add(kind)  # server tools: web_search_20250305, web_search_preview, ...
            if kind.startswith("web_search"):
                names.add("web_search")
    if dialect == "openai-chat" and "web_search_options" in doc:
        names.add("web_search")
    return frozenset(names)


def _image_part(dialect: str, part: Mapping[str, Any]) -> int:
    """The inline image bytes in one content part (1 for an image by URL), 0 when it is not
    an image."""
    kind = part.get("type")
    if dialect == "anthropic":
        if kind == "image":
            src = part.get("source")
            data = src.get("data") if isinstance(src, dict) else None
            return len(data) if isinstance(data, str) else 1
        return 0
    if dialect == "openai-chat":
        if kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            return len(url) if isinstance(url, str) and url.startswith("data:") else 1
        return 0
    if dialect == "openai-responses":
        if kind == "input_image":
            url = part.get("image_url")
            return len(url) if isinstance(url, str) and url.startswith("data:") else 1
        return 0
    inline = part.get("inlineData") or part.get("inline_data")
    if isinstance(inline, dict):
        mime = inline.get("mimeType") or inline.get("mime_type") or ""
        if isinstance(mime, str) and mime.startswith("image/"):
            data = inline.get("data")
            return len(data) if isinstance(data, str) else 1
    file = part.get("fileData") or part.get("file_data")
    if isinstance(file, dict):
        mime = file.get("mimeType") or file.get("mime_type") or ""
        if isinstance(mime, str) and mime.startswith("image/"):
            return 1
    return 0


def _images(dialect: str, content: Any, acc: list[int]) -> None:
    """Add each image's inline bytes in ``content`` (a message's content or parts) to ``acc``;
    nested tool results and function outputs are looked into."""
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, dict):
            continue
        size = _image_part(dialect, part)
        if size:
            acc.append(size)
            continue
        inner = part.get("content") if dialect == "anthropic" else part.get("output") \
            if dialect == "openai-responses" else None
        if isinstance(inner, list):
            _images(dialect, inner, acc)


def _turns(dialect: str, doc: Mapping[str, Any]) -> tuple[list[Any], bool]:
    """The history's items and whether an assistant/model turn is among them."""
    if dialect == "gemini":
        items = doc.get("contents")
        items = items if isinstance(items, list) else []
        return items, any(isinstance(c, dict) and c.get("role") == "model" for c in items)
    if dialect == "openai-responses":
        items = doc.get("input")
        if not isinstance(items, list):
            return [], False
        later = any(isinstance(c, dict) and (
            c.get("role") == "assistant" or c.get("type") in (
                "function_call", "function_call_output", "reasoning", "custom_tool_call",
                "local_shell_call", "web_search_call")) for c in items)
        return items, later
    items = doc.get("messages")
    items = items if isinstance(items, list) else []
    return items, any(isinstance(m, dict) and m.get("role") in ("assistant", "tool")
                      for m in items)


def _system_heads(doc: Mapping[str, Any]) -> list[str]:
    """The opening of each of the first system blocks (where Claude Code says who it is)."""
    system = doc.get("system")
    if isinstance(system, str):
        return [system[:400]]
    if isinstance(system, list):
        return [b["text"][:400] for b in system[:4]
                if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return []


def _subagent(doc: Mapping[str, Any]) -> bool:
    return any(_SUBAGENT_FLAG in head or any(m in head for m in _SUBAGENT_MARKERS)
               for head in _system_heads(doc))


def estimate_tokens(body_size: int, image_bytes: int, images: int) -> int:
    """Input tokens without a tokenizer: ~4 bytes of JSON per token, an image counted as
    ``IMAGE_TOKENS`` instead of its base64 bytes."""
    return max(0, body_size - image_bytes) // 4 + images * IMAGE_TOKENS


def body_features(f: Features, doc: Mapping[str, Any], body_size: int) -> Features:
    """Fill ``f``'s body features from the decoded request ``doc`` (one walk over the
    history's content parts)."""
    dialect = f.dialect
    f.thinking = _thinking(dialect, doc)
    f.tools = _tools(dialect, doc)
    items, later = _turns(dialect, doc)
    f.first_turn = not later
    sizes: list[int] = []
    key = "parts" if dialect == "gemini" else "content"
    for item in items:
        if isinstance(item, dict):
            if dialect == "openai-responses" and item.get("type") in (
                    "input_image", "function_call_output"):
                _images(dialect, [item], sizes)
            else:
                _images(dialect, item.get(key), sizes)
    f.image = bool(sizes)
    f.input_tokens = estimate_tokens(body_size, sum(s for s in sizes if s > 1), len(sizes))
    f.subagent = dialect == "anthropic" and _subagent(doc)
    return f


def features(*, model: str, dialect: str, client: str | None = None,
             user: str | None = None, key: str | None = None,
             headers: Mapping[str, str] | None = None, doc: Mapping[str, Any] | None = None,
             body_size: int = 0) -> Features:
    f = Features(model=model, dialect=dialect, client=client or "", user=user or "",
                 key=key or "", headers=headers or {})
    if doc is not None:
        body_features(f, doc, body_size)
    return f


# -- compiling and matching -------------------------------------------------------------------

Pred = Callable[[Features], bool]


def _regex(patterns: list[str]) -> Callable[[str], re.Match[str] | None]:
    """One compiled regular expression for a list of globs (any of them)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


Rx = Callable[[str], "re.Match[str] | None"]


def _glob_pred(attr: str, rx: Rx) -> Pred:
    def pred(f: Features) -> bool:
        return rx(getattr(f, attr)) is not None
    return pred


def _flag_pred(attr: str, want: bool) -> Pred:
    def pred(f: Features) -> bool:
        return getattr(f, attr) is want
    return pred


def _key_pred(rx: Rx) -> Pred:
    def pred(f: Features) -> bool:
        return bool(f.key) and (rx(f.key) is not None
                                or rx(f.key.rpartition("/")[2]) is not None)
    return pred


def _header_pred(checks: list[tuple[str, Rx]]) -> Pred:
    def pred(f: Features) -> bool:
        for name, rx in checks:
            value = f.headers.get(name)
            if value is None or rx(value) is None:
                return False
        return True
    return pred


def _tokens_pred(least: int) -> Pred:
    def pred(f: Features) -> bool:
        return f.input_tokens >= least
    return pred


def _tools_pred(rxs: list[Rx]) -> Pred:
    def pred(f: Features) -> bool:
        return all(any(rx(t) is not None for t in f.tools) for rx in rxs)
    return pred


def _preds(m: RouteMatch) -> list[tuple[str, Pred]]:
    """One predicate per key given, the envelope's (cheapest) first."""
    out: list[tuple[str, Pred]] = []
    for key in ("dialect", "client", "model", "user"):
        pats = globs(getattr(m, key))
        if pats:
            out.append((key, _glob_pred(key, _regex(pats))))
    if m.key is not None:
        out.append(("key", _key_pred(_regex(globs(m.key)))))
    if m.header:
        out.append(("header", _header_pred([(n.lower(), _regex([p]))
                                            for n, p in m.header.items()])))
    for key, attr in (("thinking", "thinking"), ("image", "image"), ("subagent", "subagent")):
        want = getattr(m, key)
        if want is not None:
            out.append((key, _flag_pred(attr, want)))
    if m.session_turn is not None:
        out.append(("session_turn", _flag_pred("first_turn", m.session_turn == "first")))
    if m.min_input_tokens is not None:
        out.append(("min_input_tokens", _tokens_pred(m.min_input_tokens)))
    if m.tools:
        out.append(("tools", _tools_pred([_regex([t]) for t in m.tools])))
    return out


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: RouteRule
    preds: tuple[Pred, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[CompiledRule, ...] = ()
    needs_body: bool = False  # some rule reads the body (BODY_KEYS)
    headers: frozenset[str] = frozenset()  # header names the rules read (lower case)
    # the whole list as one generated function: features -> index of the first match, or -1
    first: Callable[[Features], int] = lambda f: -1

    def __bool__(self) -> bool:
        return bool(self.rules)


# -- one generated function for the whole list ------------------------------------------------
# Matching runs on every request: the rules are turned into one Python function (compiled
# once per KV change) that reads each feature once and tests the rules in order, with the
# globs that are plain text around ``*`` as ``in``/``startswith``/``endswith``/``==`` and the
# others as one compiled regular expression each. 20 rules cost a few microseconds
# (bench/bench_routes.py); the closures above stay for ``explain``.

_WILD = frozenset("*?[")
_VARS = {"model": "f.model", "client": "f.client", "dialect": "f.dialect", "user": "f.user",
         "key": "f.key", "headers": "f.headers", "thinking": "f.thinking",
         "image": "f.image", "subagent": "f.subagent", "first_turn": "f.first_turn",
         "input_tokens": "f.input_tokens", "tools": "f.tools"}


class _Gen:
    def __init__(self) -> None:
        self.ns: dict[str, Any] = {}
        self.used: set[str] = set()
        self.n = 0

    def const(self, value: Any) -> str:
        self.n += 1
        name = f"_c{self.n}"
        self.ns[name] = value
        return name

    def var(self, name: str) -> str:
        self.used.add(name)
        return name

    def glob(self, subject: str, patterns: list[str]) -> str:
        """An expression true when ``subject`` (a str expression) matches any pattern."""
        parts = []
        for p in patterns:
            inner = p.strip("*")
            lead, trail = p.startswith("*"), p.endswith("*")
            if not inner:
                parts.append("True")  # "*": anything
            elif any(c in _WILD for c in inner):
                parts.append(f"{self.const(_regex([p]))}({subject}) is not None")
            elif lead and trail:
                parts.append(f"{self.const(inner)} in {subject}")
            elif lead:
                parts.append(f"{subject}.endswith({self.const(inner)})")
            elif trail:
                parts.append(f"{subject}.startswith({self.const(inner)})")
            else:
                parts.append(f"{subject} == {self.const(inner)}")
        return "(" + " or ".join(parts) + ")"

    def rule(self, m: RouteMatch) -> str:
        conds = []
        for key in ("dialect", "client", "model", "user"):
            pats = globs(getattr(m, key))
            if pats:
                conds.append(self.glob(self.var(key), pats))
        if m.key is not None:
            k = self.var("key")
            self.used.add("key_tail")
            pats = globs(m.key)
            conds.append(f"({k} != '' and ({self.glob(k, pats)} or "
                         f"{self.glob('key_tail', pats)}))")
        for name, pat in (m.header or {}).items():
            self.n += 1
            hv = f"_h{self.n}"
            conds.append(f"(({hv} := {self.var('headers')}.get({self.const(name.lower())})) "
                         f"is not None and {self.glob(hv, [pat])})")
        for key, attr in (("thinking", "thinking"), ("image", "image"),
                          ("subagent", "subagent")):
            if getattr(m, key) is not None:
                conds.append(f"{self.var(attr)} is {getattr(m, key)!r}")
        if m.session_turn is not None:
            conds.append(f"{self.var('first_turn')} is {m.session_turn == 'first'!r}")
        if m.min_input_tokens is not None:
            conds.append(f"{self.var('input_tokens')} >= {int(m.min_input_tokens)}")
        for t in m.tools or ():
            tools = self.var("tools")
            if any(c in _WILD for c in t):
                conds.append(f"any({self.glob('_t', [t])} for _t in {tools})")
            else:
                conds.append(f"{self.const(t)} in {tools}")
        return " and ".join(conds) or "True"


def _generate(rules: list[RouteRule]) -> Callable[[Features], int]:
    gen = _Gen()
    tests = [f"    if {gen.rule(r.match)}:\n        return {i}" for i, r in enumerate(rules)]
    prologue = [f"    {v} = {_VARS[v]}" for v in sorted(gen.used) if v in _VARS]
    if "key_tail" in gen.used:
        prologue.append("    key_tail = key.rpartition('/')[2]")
    src = "def _first(f):\n" + "\n".join([*prologue, *tests, "    return -1"]) + "\n"
    code = compile(src, "<route rules>", "exec")
    exec(code, gen.ns)  # the source is built from validated rules; values are constants
    fn: Callable[[Features], int] = gen.ns["_first"]
    return fn


def compile_rules(rules: list[RouteRule]) -> RuleSet:
    compiled = []
    needs_body = False
    headers: set[str] = set()
    for rule in rules:
        pairs = _preds(rule.match)
        keys = tuple(k for k, _ in pairs)
        needs_body = needs_body or any(k in BODY_KEYS for k in keys)
        headers.update(n.lower() for n in rule.match.header or {})
        compiled.append(CompiledRule(rule, tuple(p for _, p in pairs), keys))
    return RuleSet(tuple(compiled), needs_body, frozenset(headers), _generate(rules))


def match(rules: RuleSet, f: Features) -> RouteRule | None:
    """The first rule whose every key holds for ``f``, or None."""
    i = rules.first(f)
    return rules.rules[i].rule if i >= 0 else None


def _why(key: str, m: RouteMatch, f: Features) -> str:
    if key == "header":
        missing = [f"{n}={f.headers.get(n.lower())!r} (wants {p!r})"
                   for n, p in (m.header or {}).items()
                   if not fnmatch.fnmatchcase(f.headers.get(n.lower()) or "", p)
                   or f.headers.get(n.lower()) is None]
        return "header " + ", ".join(missing)
    if key == "min_input_tokens":
        return f"input ~{f.input_tokens} tokens < {m.min_input_tokens}"
    if key == "tools":
        missing = [t for t in m.tools or () if not any(fnmatch.fnmatchcase(x, t)
                                                       for x in f.tools)]
        return f"no tool {', '.join(map(repr, missing))} among its {len(f.tools)}"
    if key == "session_turn":
        return f"session_turn is {'first' if f.first_turn else 'later'}, wants {m.session_turn}"
    if key == "key":
        return f"key {f.key or '-'!r} is not {m.key!r}"
    have = getattr(f, key)
    return f"{key} is {have!r}, wants {getattr(m, key)!r}"


def explain(rules: RuleSet, f: Features) -> list[tuple[str, str]]:
    """For each rule in order: (name, verdict): "matched", "not reached (an earlier rule
    matched)" or the keys that did not hold, and why."""
    out: list[tuple[str, str]] = []
    chosen = False
    for cr in rules.rules:
        failed = [_why(k, cr.rule.match, f) for k, p in zip(cr.keys, cr.preds, strict=True)
                  if not p(f)]
        if failed:
            out.append((cr.rule.name, "no: " + "; ".join(failed)))
        elif chosen:
            out.append((cr.rule.name, "would match, but an earlier rule matched first"))
        else:
            out.append((cr.rule.name, "matched"))
            chosen = True
    return out
