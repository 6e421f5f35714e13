"""Issue 11, "one error tree": every failure is a ``schemas.errors.GatewayError`` and renders,
in each dialect, to exactly the bytes its clients received before the tree existed.

The literals below were produced by the code before the change (``workers/translator/errors.py``
called the way each call site called it: the edge with its code and the request id, the router
with ``no_provider`` and the request id, translation errors with no code, upstream failures as
``upstream <provider> failed: ...`` with their error class). They must not change: SDKs and
CLIs parse these shapes.
"""

from __future__ import annotations

import hashlib
import types

import pytest

from edge.auth import AuthError
from edge.errors import EdgeError, render
from schemas import errors as schema_errors
from schemas.errors import (
    GatewayError,
    anthropic_type,
    error_body,
    gemini_status,
    openai_type,
    stream_error,
)
from workers.router.plan import NoProviderError
from workers.router.upstream import UpstreamFailure
from workers.translator import TranslationError

DIALECTS = ("anthropic", "openai-chat", "openai-responses", "gemini")
RID = "req_0123"

# case -> (the exception, the request id its call site rendered with)
CASES: dict[str, tuple[GatewayError, str | None]] = {
    "edge_missing_model": (EdgeError(400, "missing required field: model", "missing_model"),
                           RID),
    "edge_router_lost": (EdgeError(424, "lost, not retried", "router_lost", retryable=False),
                         RID),
    "edge_too_large": (EdgeError(413, "request body exceeds the gateway limit of 1 MB",
                                 "payload_too_large"), RID),
    "auth": (AuthError("invalid API key"), RID),
    "no_provider": (NoProviderError("no provider serves model 'x'"), RID),
    "no_provider_disabled": (NoProviderError("provider 'p' is disabled", 503), RID),
    "translation": (TranslationError("tool_choice cannot be expressed"), None),
    "translation_502": (TranslationError("MALFORMED_FUNCTION_CALL", 502), None),
    "upstream_connect": (UpstreamFailure("connect", "connection failed: refused",
                                         provider="p1"), None),
    "upstream_timeout": (UpstreamFailure("timeout", "upstream timed out (connect)",
                                         provider="p1"), None),
    "upstream_stream": (UpstreamFailure("stream_error", "overloaded_error: busy", 200,
                                        provider="p1"), None),
}

BODIES: dict[str, dict[str, bytes]] = {
    'edge_missing_model': {
        'anthropic': (b'{"type":"error","error":{"type":"invalid_request_error","message":"mis'
                      b'sing required field: model"},"request_id":"req_0123"}'),
        'openai-chat': (b'{"error":{"message":"missing required field: model","type":"invalid_'
                        b'request_error","param":null,"code":"missing_model"}}'),
        'openai-responses': (b'{"error":{"message":"missing required field: model","type":"inv'
                             b'alid_request_error","param":null,"code":"missing_model"}}'),
        'gemini': (b'{"error":{"code":400,"message":"missing required field: model","status":"'
                   b'INVALID_ARGUMENT"}}'),
    },
    'edge_router_lost': {
        'anthropic': (b'{"type":"error","error":{"type":"invalid_request_error","message":"los'
                      b't, not retried"},"request_id":"req_0123"}'),
        'openai-chat': (b'{"error":{"message":"lost, not retried","type":"invalid_request_erro'
                        b'r","param":null,"code":"router_lost"}}'),
        'openai-responses': (b'{"error":{"message":"lost, not retried","type":"invalid_request'
                             b'_error","param":null,"code":"router_lost"}}'),
        'gemini': (b'{"error":{"code":424,"message":"lost, not retried","status":"FAILED_PRECO'
                   b'NDITION"}}'),
    },
    'edge_too_large': {
        'anthropic': (b'{"type":"error","error":{"type":"request_too_large","message":"request'
                      b' body exceeds the gateway limit of 1 MB"},"request_id":"req_0123"}'),
        'openai-chat': (b'{"error":{"message":"request body exceeds the gateway limit of 1 MB"'
                        b',"type":"invalid_request_error","param":null,"code":"payload_too_lar'
                        b'ge"}}'),
        'openai-responses': (b'{"error":{"message":"request body exceeds the gateway limit of '
                             b'1 MB","type":"invalid_request_error","param":null,"code":"paylo'
                             b'ad_too_large"}}'),
        'gemini': (b'{"error":{"code":413,"message":"request body exceeds the gateway limit of'
                   b' 1 MB","status":"INVALID_ARGUMENT"}}'),
    },
    'auth': {
        'anthropic': (b'{"type":"error","error":{"type":"authentication_error","message":"inva'
                      b'lid API key"},"request_id":"req_0123"}'),
        'openai-chat': (b'{"error":{"message":"invalid API key","type":"invalid_request_error"'
                        b',"param":null,"code":"authentication"}}'),
        'openai-responses': (b'{"error":{"message":"invalid API key","type":"invalid_request_e'
                             b'rror","param":null,"code":"authentication"}}'),
        'gemini': b'{"error":{"code":401,"message":"invalid API key","status":"UNAUTHENTICATED"}}',
    },
    'no_provider': {
        'anthropic': (b'{"type":"error","error":{"type":"not_found_error","message":"no provid'
                      b'er serves model \'x\'"},"request_id":"req_0123"}'),
        'openai-chat': (b'{"error":{"message":"no provider serves model \'x\'","type":"invalid'
                        b'_request_error","param":null,"code":"no_provider"}}'),
        'openai-responses': (b'{"error":{"message":"no provider serves model \'x\'","type":"in'
                             b'valid_request_error","param":null,"code":"no_provider"}}'),
        'gemini': (b'{"error":{"code":404,"message":"no provider serves model \'x\'","status":'
                   b'"NOT_FOUND"}}'),
    },
    'no_provider_disabled': {
        'anthropic': (b'{"type":"error","error":{"type":"overloaded_error","message":"provider'
                      b' \'p\' is disabled"},"request_id":"req_0123"}'),
        'openai-chat': (b'{"error":{"message":"provider \'p\' is disabled","type":"service_una'
                        b'vailable","param":null,"code":"no_provider"}}'),
        'openai-responses': (b'{"error":{"message":"provider \'p\' is disabled","type":"servic'
                             b'e_unavailable","param":null,"code":"no_provider"}}'),
        'gemini': (b'{"error":{"code":503,"message":"provider \'p\' is disabled","status":"UNA'
                   b'VAILABLE"}}'),
    },
    'translation': {
        'anthropic': (b'{"type":"error","error":{"type":"invalid_request_error","message":"too'
                      b'l_choice cannot be expressed"}}'),
        'openai-chat': (b'{"error":{"message":"tool_choice cannot be expressed","type":"invali'
                        b'd_request_error","param":null,"code":null}}'),
        'openai-responses': (b'{"error":{"message":"tool_choice cannot be expressed","type":"i'
                             b'nvalid_request_error","param":null,"code":null}}'),
        'gemini': (b'{"error":{"code":400,"message":"tool_choice cannot be expressed","status"'
                   b':"INVALID_ARGUMENT"}}'),
    },
    'translation_502': {
        'anthropic': (b'{"type":"error","error":{"type":"api_error","message":"MALFORMED_FUNCT'
                      b'ION_CALL"}}'),
        'openai-chat': (b'{"error":{"message":"MALFORMED_FUNCTION_CALL","type":"server_error",'
                        b'"param":null,"code":null}}'),
        'openai-responses': (b'{"error":{"message":"MALFORMED_FUNCTION_CALL","type":"server_er'
                             b'ror","param":null,"code":null}}'),
        'gemini': (b'{"error":{"code":502,"message":"MALFORMED_FUNCTION_CALL","status":"UNAVAI'
                   b'LABLE"}}'),
    },
    'upstream_connect': {
        'anthropic': (b'{"type":"error","error":{"type":"api_error","message":"upstream p1 fai'
                      b'led: connection failed: refused"}}'),
        'openai-chat': (b'{"error":{"message":"upstream p1 failed: connection failed: refused"'
                        b',"type":"server_error","param":null,"code":"connect"}}'),
        'openai-responses': (b'{"error":{"message":"upstream p1 failed: connection failed: ref'
                             b'used","type":"server_error","param":null,"code":"connect"}}'),
        'gemini': (b'{"error":{"code":502,"message":"upstream p1 failed: connection failed: re'
                   b'fused","status":"UNAVAILABLE"}}'),
    },
    'upstream_timeout': {
        'anthropic': (b'{"type":"error","error":{"type":"timeout_error","message":"upstream p1'
                      b' failed: upstream timed out (connect)"}}'),
        'openai-chat': (b'{"error":{"message":"upstream p1 failed: upstream timed out (connect'
                        b')","type":"timeout","param":null,"code":"timeout"}}'),
        'openai-responses': (b'{"error":{"message":"upstream p1 failed: upstream timed out (co'
                             b'nnect)","type":"timeout","param":null,"code":"timeout"}}'),
        'gemini': (b'{"error":{"code":504,"message":"upstream p1 failed: upstream timed out (c'
                   b'onnect)","status":"DEADLINE_EXCEEDED"}}'),
    },
    'upstream_stream': {
        'anthropic': (b'{"type":"error","error":{"type":"api_error","message":"upstream p1 fai'
                      b'led: overloaded_error: busy"}}'),
        'openai-chat': (b'{"error":{"message":"upstream p1 failed: overloaded_error: busy","ty'
                        b'pe":"server_error","param":null,"code":"stream_error"}}'),
        'openai-responses': (b'{"error":{"message":"upstream p1 failed: overloaded_error: busy'
                             b'","type":"server_error","param":null,"code":"stream_error"}}'),
        'gemini': (b'{"error":{"code":502,"message":"upstream p1 failed: overloaded_error: bus'
                   b'y","status":"UNAVAILABLE"}}'),
    },
}

STREAMS: dict[str, dict[str, bytes]] = {
    'edge_missing_model': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"invalid_request_e'
                      b'rror","message":"missing required field: model"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"missing required field: model","type":"in'
                        b'valid_request_error","param":null,"code":"missing_model"}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"invalid_request_error","code":"missing_model","messag'
                             b'e":"missing required field: model","param":null}}\n\nevent: res'
                             b'ponse.failed\ndata: {"type":"response.failed","sequence_number"'
                             b':1,"response":{"id":"resp_error","object":"response","created_a'
                             b't":1700000000,"status":"failed","error":{"code":"missing_model"'
                             b',"message":"missing required field: model"},"output":[],"usage"'
                             b':null}}\n\n'),
        'gemini': (b'data: {"error":{"code":400,"message":"missing required field: model","sta'
                   b'tus":"INVALID_ARGUMENT"}}\n\n'),
    },
    'edge_router_lost': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"invalid_request_e'
                      b'rror","message":"lost, not retried"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"lost, not retried","type":"invalid_reques'
                        b't_error","param":null,"code":"router_lost"}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"invalid_request_error","code":"router_lost","message"'
                             b':"lost, not retried","param":null}}\n\nevent: response.failed\n'
                             b'data: {"type":"response.failed","sequence_number":1,"response":'
                             b'{"id":"resp_error","object":"response","created_at":1700000000,'
                             b'"status":"failed","error":{"code":"router_lost","message":"lost'
                             b', not retried"},"output":[],"usage":null}}\n\n'),
        'gemini': (b'data: {"error":{"code":424,"message":"lost, not retried","status":"FAILED'
                   b'_PRECONDITION"}}\n\n'),
    },
    'edge_too_large': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"request_too_large'
                      b'","message":"request body exceeds the gateway limit of 1 MB"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"request body exceeds the gateway limit of'
                        b' 1 MB","type":"invalid_request_error","param":null,"code":"payload_t'
                        b'oo_large"}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"invalid_request_error","code":"payload_too_large","me'
                             b'ssage":"request body exceeds the gateway limit of 1 MB","param"'
                             b':null}}\n\nevent: response.failed\ndata: {"type":"response.fail'
                             b'ed","sequence_number":1,"response":{"id":"resp_error","object":'
                             b'"response","created_at":1700000000,"status":"failed","error":{"'
                             b'code":"payload_too_large","message":"request body exceeds the g'
                             b'ateway limit of 1 MB"},"output":[],"usage":null}}\n\n'),
        'gemini': (b'data: {"error":{"code":413,"message":"request body exceeds the gateway li'
                   b'mit of 1 MB","status":"INVALID_ARGUMENT"}}\n\n'),
    },
    'auth': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"authentication_er'
                      b'ror","message":"invalid API key"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"invalid API key","type":"invalid_request_'
                        b'error","param":null,"code":"authentication"}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"invalid_request_error","code":"authentication","messa'
                             b'ge":"invalid API key","param":null}}\n\nevent: response.failed'
                             b'\ndata: {"type":"response.failed","sequence_number":1,"response'
                             b'":{"id":"resp_error","object":"response","created_at":170000000'
                             b'0,"status":"failed","error":{"code":"authentication","message":'
                             b'"invalid API key"},"output":[],"usage":null}}\n\n'),
        'gemini': (b'data: {"error":{"code":401,"message":"invalid API key","status":"UNAUTHEN'
                   b'TICATED"}}\n\n'),
    },
    'no_provider': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"not_found_error",'
                      b'"message":"no provider serves model \'x\'"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"no provider serves model \'x\'","type":"i'
                        b'nvalid_request_error","param":null,"code":"no_provider"}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"invalid_request_error","code":"no_provider","message"'
                             b':"no provider serves model \'x\'","param":null}}\n\nevent: resp'
                             b'onse.failed\ndata: {"type":"response.failed","sequence_number":'
                             b'1,"response":{"id":"resp_error","object":"response","created_at'
                             b'":1700000000,"status":"failed","error":{"code":"no_provider","m'
                             b'essage":"no provider serves model \'x\'"},"output":[],"usage":n'
                             b'ull}}\n\n'),
        'gemini': (b'data: {"error":{"code":404,"message":"no provider serves model \'x\'","st'
                   b'atus":"NOT_FOUND"}}\n\n'),
    },
    'no_provider_disabled': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"'
                      b',"message":"provider \'p\' is disabled"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"provider \'p\' is disabled","type":"servi'
                        b'ce_unavailable","param":null,"code":"no_provider"}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"service_unavailable","code":"no_provider","message":"'
                             b'provider \'p\' is disabled","param":null}}\n\nevent: response.f'
                             b'ailed\ndata: {"type":"response.failed","sequence_number":1,"res'
                             b'ponse":{"id":"resp_error","object":"response","created_at":1700'
                             b'000000,"status":"failed","error":{"code":"no_provider","message'
                             b'":"provider \'p\' is disabled"},"output":[],"usage":null}}\n\n'),
        'gemini': (b'data: {"error":{"code":503,"message":"provider \'p\' is disabled","status'
                   b'":"UNAVAILABLE"}}\n\n'),
    },
    'translation': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"invalid_request_e'
                      b'rror","message":"tool_choice cannot be expressed"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"tool_choice cannot be expressed","type":"'
                        b'invalid_request_error","param":null,"code":null}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"invalid_request_error","code":"invalid_request_error"'
                             b',"message":"tool_choice cannot be expressed","param":null}}\n\n'
                             b'event: response.failed\ndata: {"type":"response.failed","sequen'
                             b'ce_number":1,"response":{"id":"resp_error","object":"response",'
                             b'"created_at":1700000000,"status":"failed","error":{"code":"serv'
                             b'er_error","message":"tool_choice cannot be expressed"},"output"'
                             b':[],"usage":null}}\n\n'),
        'gemini': (b'data: {"error":{"code":400,"message":"tool_choice cannot be expressed","s'
                   b'tatus":"INVALID_ARGUMENT"}}\n\n'),
    },
    'translation_502': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"api_error","messa'
                      b'ge":"MALFORMED_FUNCTION_CALL"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"MALFORMED_FUNCTION_CALL","type":"server_e'
                        b'rror","param":null,"code":null}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"server_error","code":"server_error","message":"MALFOR'
                             b'MED_FUNCTION_CALL","param":null}}\n\nevent: response.failed\nda'
                             b'ta: {"type":"response.failed","sequence_number":1,"response":{"'
                             b'id":"resp_error","object":"response","created_at":1700000000,"s'
                             b'tatus":"failed","error":{"code":"server_error","message":"MALFO'
                             b'RMED_FUNCTION_CALL"},"output":[],"usage":null}}\n\n'),
        'gemini': (b'data: {"error":{"code":502,"message":"MALFORMED_FUNCTION_CALL","status":"'
                   b'UNAVAILABLE"}}\n\n'),
    },
    'upstream_connect': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"api_error","messa'
                      b'ge":"upstream p1 failed: connection failed: refused"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"upstream p1 failed: connection failed: re'
                        b'fused","type":"server_error","param":null,"code":"connect"}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"server_error","code":"connect","message":"upstream p1'
                             b' failed: connection failed: refused","param":null}}\n\nevent: r'
                             b'esponse.failed\ndata: {"type":"response.failed","sequence_numbe'
                             b'r":1,"response":{"id":"resp_error","object":"response","created'
                             b'_at":1700000000,"status":"failed","error":{"code":"connect","me'
                             b'ssage":"upstream p1 failed: connection failed: refused"},"outpu'
                             b't":[],"usage":null}}\n\n'),
        'gemini': (b'data: {"error":{"code":502,"message":"upstream p1 failed: connection fail'
                   b'ed: refused","status":"UNAVAILABLE"}}\n\n'),
    },
    'upstream_timeout': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"timeout_error","m'
                      b'essage":"upstream p1 failed: upstream timed out (connect)"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"upstream p1 failed: upstream timed out (c'
                        b'onnect)","type":"timeout","param":null,"code":"timeout"}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"timeout","code":"timeout","message":"upstream p1 fail'
                             b'ed: upstream timed out (connect)","param":null}}\n\nevent: resp'
                             b'onse.failed\ndata: {"type":"response.failed","sequence_number":'
                             b'1,"response":{"id":"resp_error","object":"response","created_at'
                             b'":1700000000,"status":"failed","error":{"code":"timeout","messa'
                             b'ge":"upstream p1 failed: upstream timed out (connect)"},"output'
                             b'":[],"usage":null}}\n\n'),
        'gemini': (b'data: {"error":{"code":504,"message":"upstream p1 failed: upstream timed '
                   b'out (connect)","status":"DEADLINE_EXCEEDED"}}\n\n'),
    },
    'upstream_stream': {
        'anthropic': (b'event: error\ndata: {"type":"error","error":{"type":"api_error","messa'
                      b'ge":"upstream p1 failed: overloaded_error: busy"}}\n\n'),
        'openai-chat': (b'data: {"error":{"message":"upstream p1 failed: overloaded_error: bus'
                        b'y","type":"server_error","param":null,"code":"stream_error"}}\n\n'),
        'openai-responses': (b'event: error\ndata: {"type":"error","sequence_number":0,"error"'
                             b':{"type":"server_error","code":"stream_error","message":"upstre'
                             b'am p1 failed: overloaded_error: busy","param":null}}\n\nevent: '
                             b'response.failed\ndata: {"type":"response.failed","sequence_numb'
                             b'er":1,"response":{"id":"resp_error","object":"response","create'
                             b'd_at":1700000000,"status":"failed","error":{"code":"stream_erro'
                             b'r","message":"upstream p1 failed: overloaded_error: busy"},"out'
                             b'put":[],"usage":null}}\n\n'),
        'gemini': (b'data: {"error":{"code":502,"message":"upstream p1 failed: overloaded_erro'
                   b'r: busy","status":"UNAVAILABLE"}}\n\n'),
    },
}

# sha256 of "<status> <anthropic type> <openai type> <gemini status>" for 100..599, before
MAPPING_SHA256 = "cdab51be2ba5d73aa2b27b330a30b3041d8f9e3583614d5d90102cde1b46540f"


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Responses in-stream error carries ``created_at``: pin it."""
    monkeypatch.setattr(schema_errors, "time", types.SimpleNamespace(time=lambda: 1700000000.0))


def test_the_five_kinds_are_gateway_errors() -> None:
    for kind in (EdgeError, AuthError, NoProviderError, UpstreamFailure, TranslationError):
        assert issubclass(kind, GatewayError)
    for exc, _ in CASES.values():
        assert isinstance(exc, GatewayError)
        assert 400 <= exc.status < 600 and exc.code and exc.message


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dialect", DIALECTS)
def test_body_bytes_unchanged(case: str, dialect: str) -> None:
    exc, request_id = CASES[case]
    assert exc.render(dialect, request_id=request_id) == BODIES[case][dialect]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dialect", DIALECTS)
def test_stream_bytes_unchanged(case: str, dialect: str, frozen_clock: None) -> None:
    exc, _ = CASES[case]
    assert exc.render_stream(dialect) == STREAMS[case][dialect]


def test_functions_and_status_mapping_unchanged(frozen_clock: None) -> None:
    table = "\n".join(f"{c} {anthropic_type(c)} {openai_type(c)} {gemini_status(c)}"
                      for c in range(100, 600))
    assert hashlib.sha256(table.encode()).hexdigest() == MAPPING_SHA256
    auth = BODIES["auth"]
    for d in DIALECTS:
        assert error_body(d, 401, "invalid API key", code="authentication",
                          request_id=RID) == auth[d]
        assert render(d, 401, "invalid API key", code="authentication",
                      request_id=RID) == auth[d]
        assert stream_error(d, 401, "invalid API key", code="authentication") == \
            STREAMS["auth"][d]
    # the edge's default dialect for a path it could not place
    assert render("", 401, "invalid API key", code="authentication", request_id=RID) == \
        auth["openai-chat"]


def test_fields_a_client_needs() -> None:
    lost = CASES["edge_router_lost"][0]
    assert lost.http_headers() == [(b"x-should-retry", b"false")]
    assert CASES["edge_missing_model"][0].http_headers() == []
    assert AuthError("x").status == 401 and AuthError("x").code == "authentication"
    assert NoProviderError("x").code == "no_provider"
    assert TranslationError("x").code == "translation" and TranslationError("x").client_code \
        is None
    failed = UpstreamFailure("http_429", "slow down", 429, b"{}", {"retry-after": "3"},
                             provider="p1")
    assert (failed.status, failed.upstream_status, failed.error_class) == (429, 429, "http_429")
    assert failed.retry_after == "3" and failed.provider == "p1"
    assert failed.http_headers() == [(b"retry-after", b"3")]
    cut = UpstreamFailure("connect", "refused")
    assert (cut.status, cut.upstream_status, cut.message) == (502, 0, "refused")
    assert UpstreamFailure("timeout", "slow").status == 504


def test_the_edge_lost_request_is_not_retryable() -> None:
    from edge.app import _lost

    exc = _lost("router_lost")
    assert (exc.status, exc.code) == (424, "router_lost")
    assert exc.http_headers() == [(b"x-should-retry", b"false")]
