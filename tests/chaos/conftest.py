"""Fixtures of the chaos tests: the fake upstreams (one per dialect, answering per the mode tag
in each prompt) shared by a module, and the per-part kill reports, each run once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator

import pytest

from tests.chaos.harness import ChaosFakes, PartReport, run_kill

# requests per killed part (CI default; CHAOS_REQUESTS=300 for a longer local run)
REQUESTS = int(os.environ.get("CHAOS_REQUESTS", "150"))
CONCURRENCY = int(os.environ.get("CHAOS_CONCURRENCY", "8"))

_REPORTS: dict[str, PartReport] = {}


@pytest.fixture(scope="module")
def chaos_fakes() -> Iterator[ChaosFakes]:
    with ChaosFakes() as fakes:
        yield fakes


@pytest.fixture
def report_for(chaos_fakes: ChaosFakes, tmp_path_factory: pytest.TempPathFactory,
               capsys: pytest.CaptureFixture[str]) -> Callable[[str], PartReport]:
    """``report_for(part)``: the report of killing ``part`` under load, run once per session
    (the first test that asks pays for it; the others read the same report)."""

    def get(part: str) -> PartReport:
        if part not in _REPORTS:
            workdir = tmp_path_factory.mktemp(f"chaos-{part}")
            # after kill -9 of `codeswitch up` its old parts finish their in-flight work
            # first (10-20 s under load) before it can be started again on the same home
            report = asyncio.run(run_kill(
                workdir, chaos_fakes, part, requests=REQUESTS if part != "none" else 100,
                concurrency=CONCURRENCY, recover_within=40 if part == "supervisor" else 20,
                log=print))
            _REPORTS[part] = report
            with capsys.disabled():
                print("\n" + report.render(limit=6))
        return _REPORTS[part]

    return get
