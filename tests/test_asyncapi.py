"""docs/asyncapi.json: current, complete, true to the msgspec contracts, and faststream stays
out of every gateway process."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import msgspec
import pytest

from codeswitch import asyncapi
from codeswitch.asyncapi import ENDPOINTS, build_document, document_json, main
from schemas import events, subjects
from schemas.envelope import ReplyStart, RequestEnvelope

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "asyncapi.json"
REGENERATE = ("docs/asyncapi.json is stale: run "
              "`python -m codeswitch.asyncapi -o docs/asyncapi.json`")
EVENT_TYPES: tuple[type[msgspec.Struct], ...] = typing.get_args(events.Event)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_document()


def _addresses(doc: dict[str, Any]) -> list[str]:
    return [c["address"] for c in doc["channels"].values() if c["address"] is not None]


def _template_regex(address: str) -> re.Pattern[str]:
    """A channel address as a regex over concrete subjects: {param} and * are one token,
    > is one or more."""
    parts = []
    for token in address.split("."):
        if token == ">":
            parts.append(r"[^.]+(\.[^.]+)*")
        elif token == "*" or re.fullmatch(r"\{\w+\}", token):
            parts.append(r"[^.]+")
        else:
            parts.append(re.escape(token))
    return re.compile(r"\.".join(parts) + "$")


def _covered(subject: str, patterns: list[str]) -> bool:
    return any(_template_regex(p).match(subject) for p in patterns)


def _concrete(address: str) -> str:
    return re.sub(r"\{\w+\}", "x", address).replace(">", "x")


def _payload(doc: dict[str, Any], channel_id: str) -> dict[str, Any]:
    (ref,) = doc["channels"][channel_id]["messages"].values()
    message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[-1]]
    name = message["payload"]["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = doc["components"]["schemas"][name]
    return schema


def _ours(doc: dict[str, Any]) -> dict[str, Any]:
    """What codeswitch decides, whatever the faststream version lays around it."""
    return {
        "channels": {k: (c["address"], c.get("description"), c.get("parameters"))
                     for k, c in doc["channels"].items()},
        "operations": {k: (o["action"], o.get("summary"), "reply" in o)
                       for k, o in doc["operations"].items()},
        "schemas": doc["components"]["schemas"],
        "info": doc["info"]["description"],
    }


# -- the committed document is the generated one ----------------------------------------------


def test_committed_document_is_current(doc: dict[str, Any]) -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    if committed["info"].get("x-generator") == doc["info"]["x-generator"]:
        # same faststream/pydantic/msgspec: byte for byte
        assert COMMITTED.read_text(encoding="utf-8") == document_json(doc), REGENERATE
    else:
        # other library versions may lay the document out differently: compare what is ours
        assert _ours(committed) == _ours(doc), REGENERATE


def test_cli_writes_the_document(tmp_path: Path, doc: dict[str, Any]) -> None:
    out = tmp_path / "asyncapi.json"
    assert main(["--json", "-o", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == doc


def test_cli_yaml_needs_pyyaml(tmp_path: Path) -> None:
    try:
        import yaml  # noqa: F401
    except ImportError:
        assert main(["--yaml", "-o", str(tmp_path / "a.yaml")]) == 2
        assert not (tmp_path / "a.yaml").exists()
    else:
        assert main(["--yaml", "-o", str(tmp_path / "a.yaml")]) == 0
        assert "llm.request.{dialect}" in (tmp_path / "a.yaml").read_text(encoding="utf-8")


# -- every subject, every event ---------------------------------------------------------------


def test_every_subject_constant_is_a_channel(doc: dict[str, Any]) -> None:
    addresses = _addresses(doc)
    constants = {n: getattr(subjects, n) for n in subjects.__all__
                 if n.isupper() and isinstance(getattr(subjects, n), str)}
    assert len(constants) >= 10, constants
    for name, value in constants.items():
        assert any(a == value or a.startswith(value + ".") for a in addresses), \
            f"subjects.{name} = {value!r} has no channel in docs/asyncapi.json"


def test_every_subject_function_lands_on_a_channel(doc: dict[str, Any]) -> None:
    addresses = _addresses(doc)
    functions = [getattr(subjects, n) for n in subjects.__all__ if n.endswith("_subject")]
    assert len(functions) >= 7
    for fn in functions:
        subject = fn(*["x"] * len(inspect.signature(fn).parameters))
        assert _covered(subject, addresses), f"{fn.__name__}() -> {subject!r}: no channel"


def test_subjects_used_outside_schemas_land_on_channels(doc: dict[str, Any]) -> None:
    from workers.alerts.service import ALERT_SUBJECTS, INPUT_SUBJECTS, alert_subject
    from workers.ledger.wire import ENCODING_HEADER
    from workers.router.reply import ACK_PREFIX

    addresses = _addresses(doc)
    assert asyncapi.ACK_PREFIX == ACK_PREFIX
    assert asyncapi.LEDGER_ENCODING_HEADER == ENCODING_HEADER
    assert _covered(f"{ACK_PREFIX}.r1.rid", addresses)
    for event in (events.AlertFired(id="i", ts=0, rule="r", metric="m", value=1, threshold=1,
                                    comparison=">", window_s=1),
                  events.AlertResolved(id="i", ts=0, rule="r", metric="m", value=1),
                  events.AlertNotificationFailed(id="i", ts=0, rule="r", channel="c",
                                                 alert_id="a", attempts=1, error="e")):
        assert _covered(alert_subject(event), addresses), alert_subject(event)
    # what the alerts worker's consumers read is what the document says they receive
    for part, filters in (("alerts", INPUT_SUBJECTS), ("alerts-notify", ALERT_SUBJECTS)):
        received = [ep.address for ep in ENDPOINTS if ep.part == part and ep.action == "receive"]
        assert received
        for address in received:
            assert _covered(_concrete(address), filters), (part, address)
        for f in filters:
            assert any(_covered(_concrete(a), [f]) for a in received), (part, f)


def test_streams_hold_what_the_document_says(doc: dict[str, Any]) -> None:
    from runtime.bus import stream_configs

    stored = {c.name: list(c.subjects or []) for c in stream_configs()}
    assert set(subjects.FACT_SUBJECTS) <= set(stored[asyncapi.EVENTS])
    for ep in ENDPOINTS:
        if ep.stream is not None:
            assert _covered(_concrete(ep.address), stored[ep.stream]), ep.id
    # every fact subject pattern of the event log has a channel, and every fact channel is
    # stored by the event log
    fact_channels = [ep.address for ep in ENDPOINTS if ep.stream == asyncapi.EVENTS]
    for pattern in subjects.FACT_SUBJECTS:
        assert any(_covered(_concrete(a), [pattern]) for a in fact_channels), pattern


def test_every_stream_bucket_and_consumer_is_named(doc: dict[str, Any]) -> None:
    from runtime import names

    described = doc["info"]["description"]
    declared = [getattr(names, n) for n in names.__all__
                if n.endswith(("_STREAM", "_BUCKET", "_DURABLE", "_DELIVER"))]
    assert len(declared) >= 14
    for name in [*declared, *names.KV_BUCKETS]:
        assert f"`{name}`" in described, name


def test_every_event_type_is_a_payload(doc: dict[str, Any]) -> None:
    assert len(EVENT_TYPES) >= 8
    payload_names = {_payload(doc, cid)["title"] for cid in doc["channels"]}
    structs: list[type[msgspec.Struct]] = [*EVENT_TYPES, RequestEnvelope, ReplyStart]
    for struct in structs:
        assert struct.__name__ in doc["components"]["schemas"], struct.__name__
    for struct in EVENT_TYPES:
        assert struct.__name__ in payload_names, f"{struct.__name__} is no channel's payload"
    # and each fact is on the subject its producer publishes it to
    assert _payload(doc, "llm.attempt:router:send")["title"] == "AttemptFinished"
    assert _payload(doc, "llm.response:edge:send")["title"] == "RequestCompleted"
    assert _payload(doc, "user.quota:alerts:receive")["title"] == "QuotaUsed"
    assert _payload(doc, "gateway.part:supervisor:send")["title"] == "PartChanged"


# -- payload schemas are the msgspec contracts ------------------------------------------------


@pytest.mark.parametrize("struct", [events.AttemptFinished, events.RequestCompleted,
                                    events.QuotaUsed, RequestEnvelope])
def test_payload_schema_matches_msgspec_fields(doc: dict[str, Any],
                                               struct: type[msgspec.Struct]) -> None:
    schema = doc["components"]["schemas"][struct.__name__]
    fields = msgspec.structs.fields(struct)
    tag = [struct.__struct_config__.tag_field] if struct.__struct_config__.tag_field else []
    assert list(schema["properties"]) == tag + [f.encode_name for f in fields]
    assert schema["required"] == tag + [f.encode_name for f in fields if f.required]
    if tag:
        assert schema["properties"]["type"] == {"enum": [struct.__name__]}
    for f in fields:
        prop = schema["properties"][f.encode_name]
        if not f.required:
            assert "default" in prop, f.name
        if f.type is int:
            assert prop["type"] == "integer", f.name
        elif f.type is bool:
            assert prop["type"] == "boolean", f.name
        elif f.type is str:
            assert prop["type"] == "string", f.name


def test_nested_and_constrained_fields(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    usage = next(v for v in schemas["AttemptFinished"]["properties"]["usage"]["anyOf"]
                 if v.get("type") == "object")
    assert list(usage["properties"]) == [f.name for f in msgspec.structs.fields(events.Usage)]
    assert schemas["AttemptFinished"]["properties"]["attempt"]["type"] == "integer"
    assert schemas["QuotaUsed"]["properties"]["limit"] == {"exclusiveMinimum": 0,
                                                           "type": "number"}
    assert schemas["ReplyStart"]["required"] == ["status"]


def test_real_events_fit_their_schema(doc: dict[str, Any]) -> None:
    schema = doc["components"]["schemas"]["RequestCompleted"]
    event = events.RequestCompleted(id=events.new_id(), ts=1.0, request_id="r", dialect="gemini",
                                    usage=events.Usage(input_tokens=3), status=200)
    encoded = json.loads(events.encode_event(event))
    assert set(schema["required"]) <= set(encoded) <= set(schema["properties"])
    assert encoded["type"] in schema["properties"]["type"]["enum"]


def test_failure_note_mirrors_the_router() -> None:
    from workers.router.breakers import _FailureNote

    assert msgspec.json.schema(asyncapi.FailureNote)["$defs"]["FailureNote"]["properties"] == \
        msgspec.json.schema(_FailureNote)["$defs"]["_FailureNote"]["properties"]


# -- a well-formed AsyncAPI 3.0 document ------------------------------------------------------


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[unquote(part).replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if isinstance(node.get("$ref"), str) else []) + \
            [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_document_is_well_formed(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    refs = _refs(doc)
    assert len(refs) > 100
    for ref in refs:
        _resolve(doc, ref)  # KeyError on a dangling reference
    for cid, channel in doc["channels"].items():
        params = re.findall(r"\{(\w+)\}", channel["address"] or "")
        assert sorted(channel.get("parameters", {})) == sorted(params), cid
    for oid, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), oid
        if "reply" in op:
            assert _resolve(doc, op["reply"]["channel"]["$ref"])["address"] is None
    for ep in ENDPOINTS:
        assert ("reply" in doc["operations"][ep.id]) == (ep.reply is not None), ep.id
    # faststream's own correlation header is not codeswitch's
    for message in doc["components"]["messages"].values():
        assert "correlation_id" not in json.dumps(message.get("correlationId", {}))


def test_faststream_can_serve_the_committed_document() -> None:
    """`faststream docs serve docs/asyncapi.json` parses the file with this model."""
    from faststream.specification.asyncapi.v3_0_0.schema import ApplicationSchema

    parsed = ApplicationSchema.model_validate_json(COMMITTED.read_bytes())
    assert parsed.channels["llm.request:edge:send"].address == "llm.request.{dialect}"


# -- faststream stays out of the gateway ------------------------------------------------------


def test_only_codeswitch_asyncapi_imports_faststream() -> None:
    importers = [
        str(path.relative_to(ROOT))
        for top in ("codeswitch", "edge", "workers", "runtime", "schemas")
        for path in (ROOT / top).rglob("*.py")
        if re.search(r"^\s*(from|import)\s+faststream", path.read_text(encoding="utf-8"),
                     re.MULTILINE)
    ]
    assert importers == ["codeswitch/asyncapi.py"]


def test_no_part_loads_faststream() -> None:
    code = (
        "import sys, schemas.events, schemas.envelope, schemas.subjects, schemas.config, "
        "runtime.bus, runtime.facts, edge.app, workers.router.service, "
        "workers.ledger.service, workers.alerts.service, codeswitch.cli, codeswitch.supervisor\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('faststream', 'fast_depends')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
