from __future__ import annotations

from workers.router.breaker import BreakerPolicy, BreakerState, allow, breaker_key, record

P = BreakerPolicy(failures=3, window_s=10, cooldown_s=5, successes=2, probe_timeout_s=30)


def test_opens_after_n_failures_inside_the_window_only() -> None:
    st = None
    for t in (0.0, 20.0, 40.0):  # spread out: never 3 inside 10 s
        st = record(st, False, t, P) or st
        assert st.state == "closed"
    st = record(st, False, 41.0, P) or st
    assert st.state == "closed"
    st = record(st, False, 42.0, P) or st
    assert st.state == "open" and st.opened_at == 42.0


def test_success_while_closed_writes_nothing() -> None:
    assert record(None, True, 1.0, P) is None
    assert record(BreakerState(failures=[1.0]), True, 2.0, P) is None


def test_open_half_open_probe_and_close() -> None:
    st = BreakerState(state="open", opened_at=100.0)
    assert allow(st, 104.9, P) == (False, None)
    ok, probe = allow(st, 105.0, P)
    assert ok and probe is not None and probe.state == "half_open" and probe.probe_at == 105.0
    # while the probe is in flight, nobody else goes
    assert allow(probe, 106.0, P) == (False, None)
    after_one = record(probe, True, 106.0, P)
    assert after_one is not None and after_one.state == "half_open" and after_one.successes == 1
    ok, probe2 = allow(after_one, 106.5, P)
    assert ok and probe2 is not None
    closed = record(probe2, True, 107.0, P)
    assert closed is not None and closed.state == "closed"


def test_failed_probe_reopens_and_lost_probe_is_replaced() -> None:
    probe = BreakerState(state="half_open", opened_at=0.0, probe_at=10.0)
    reopened = record(probe, False, 11.0, P, reason="http_503")
    assert reopened is not None and reopened.state == "open" and reopened.opened_at == 11.0
    assert allow(probe, 10.0 + 30.0, P)[0] is True  # probe timed out: another may start


def test_results_while_open_change_nothing_and_keys_are_safe() -> None:
    assert record(BreakerState(state="open", opened_at=1.0), False, 2.0, P) is None
    assert breaker_key("main") == "main"
    assert breaker_key("main", "gpt-4.1/mini*") == "main.gpt-4_1_mini_"
