"""The pure side of multi-device sync (runtime/sync.py): names, subjects, the nats-server
config of a leaf and of a hub."""

from __future__ import annotations

from runtime import sync
from runtime.names import EVENTS_STREAM
from schemas.subjects import FACT_SUBJECTS


def test_device_domain_is_one_token_and_never_the_hub() -> None:
    assert sync.device_domain("laptop.local") == "d-laptop_local"
    assert sync.device_domain("hub") != sync.HUB_DOMAIN
    assert "." not in sync.device_domain("a.b c*>")


def test_peer_subjects_round_trip() -> None:
    assert sync.local_subject("dev.d-A.llm.response.anthropic.x") == "llm.response.anthropic.x"
    assert sync.peer_domain("dev.d-A.session.deleted") == "d-A"
    assert sync.local_subject("llm.response.anthropic.x") == "llm.response.anthropic.x"
    assert sync.peer_domain("session.deleted") is None


def test_hub_seq_from_the_source_header() -> None:
    assert sync.hub_seq("CS_HUB:ab12cd 42 dev.d-B.> dev.d-B.>") == 42
    assert sync.hub_seq("CS_EVENTS:ab12cd 42 > >") is None
    assert sync.hub_seq(None) is None
    assert sync.hub_seq("garbage") is None


def test_sources_both_ways() -> None:
    up = sync.hub_source("d-A")
    assert up["name"] == EVENTS_STREAM and up["external"]["api"] == "$JS.d-A.API"
    # only the device's own facts (never what it got from the others: no loop)
    assert [t["src"] for t in up["subject_transforms"]] == list(FACT_SUBJECTS)
    assert all(t["dest"] == f"dev.d-A.{t['src']}" for t in up["subject_transforms"])
    assert not any(t["src"].startswith("dev.") for t in up["subject_transforms"])
    down = sync.peer_source("d-B")
    assert down["name"] == sync.HUB_STREAM and down["filter_subject"] == "dev.d-B.>"
    assert sync.source_domain(up) == "d-A"
    assert sync.source_domain(down) is None


def test_leaf_config_keeps_requests_replies_and_queries_local() -> None:
    text = "\n".join(sync.leaf_remote_lines("nats://leaf:pw@hub:7422"))
    for subject in ("llm.>", "cs.>", "_INBOX.cs.>", "_INBOX.csack.>", "dev.>", "$O.>",
                    "session.>", "admin.>"):
        assert text.count(f'"{subject}"') == 2, subject  # deny_imports and deny_exports
    assert '"$JS.' not in text  # the domain's API crosses (sources, the hub's buckets)


def test_secret_check_names_a_key_without_revealing_it() -> None:
    key = b"k" * 44
    check = sync.secret_check_value(key)
    assert len(check) == 16 and check == sync.secret_check_value(key)
    assert check != sync.secret_check_value(b"j" * 44)
    info = {"config": {"metadata": {sync.SECRET_CHECK: check}}}
    assert sync.key_mismatch(info, check) is None
    assert "secret key" in (sync.key_mismatch(info, "0" * 16) or "")
