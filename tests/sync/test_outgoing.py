"""The send gate's bookkeeping on its own: probes, strikes, the lowered limit, requeueing in order."""

from __future__ import annotations

import pytest

from edge_runtime.sync.outgoing import STRIKES, Outgoing, PayloadTooLarge, PublishHandle, SendGate


def _msg(n: int, tag: str = "") -> Outgoing:
    return Outgoing("edge/devices/d/events", tag.encode() + b"x" * (n - len(tag)), 1, False, PublishHandle())


def _open(gate: SendGate, mps: int | None = None) -> None:
    gate.reopened(mps)


def test_a_larger_message_waits_until_the_probe_before_it_is_answered_smaller_ones_follow_at_once():
    gate = SendGate(max_payload=100_000, max_queued=100)
    _open(gate)
    first, small, bigger = _msg(1000), _msg(500), _msg(2000)
    for m in (first, small, bigger):
        assert gate.enqueue(m)
    msg, probe = gate.next_to_send()
    assert msg is first and probe is not None
    assert gate.next_to_send() is None  # 500 bytes: not proven yet on this connection either
    gate.handed_over(first, 1, probe, on_wire=True)
    assert gate.acked(1, True, None) == (first, True, None, False)
    msg, probe = gate.next_to_send()
    assert msg is small and probe is None  # under the proven size: no probe
    gate.handed_over(small, 2, None, on_wire=True)
    assert gate.next_to_send() is None  # bigger is a probe: it waits until nothing is unacknowledged
    gate.acked(2, True, None)
    msg, probe = gate.next_to_send()
    assert msg is bigger and probe is not None


def test_strikes_refuse_the_message_lower_the_limit_and_requeue_the_rest_in_order():
    gate = SendGate(max_payload=100_000, max_queued=100)
    _open(gate)
    small, big, after = _msg(1000, "s"), _msg(9000, "b"), _msg(800, "a")
    gate.enqueue(small)
    m, p = gate.next_to_send()
    gate.handed_over(m, 1, p, on_wire=True)
    gate.acked(1, True, None)  # the broker took 1,000 bytes
    gate.enqueue(big)
    gate.enqueue(after)
    m, p = gate.next_to_send()
    assert m is big and p is not None
    gate.handed_over(big, 2, p, on_wire=True)
    assert gate.next_to_send() == (after, None)  # under the size proven on this connection: right behind it
    gate.handed_over(after, 3, None, on_wire=True)
    for strike in range(1, STRIKES + 1):
        assert gate.lost_connection(strike=True) is big and big.strikes == strike
        assert after.strikes == 0  # only the probe is to blame
        struck, refused = gate.reopened(None)
        if strike < STRIKES:  # requeued in send order: big leads again, as a probe
            assert struck == [] and refused == []
            m, p = gate.next_to_send()
            assert m is big and p is not None
            gate.handed_over(big, 10 + strike, p, on_wire=True)
    assert struck == [big] and [m for m, _ in refused] == [big]
    assert "too large for the broker" in refused[0][1]
    assert 1000 <= gate.max_payload < 9000  # halfway between the largest taken and the refused size
    with pytest.raises(PayloadTooLarge):
        gate.check("edge/devices/d/events", b"x" * 9000)
    assert gate.next_to_send()[0] is after  # the rest goes on, in order


def test_a_drop_before_the_probe_reached_the_wire_is_no_strike():
    gate = SendGate(max_payload=100_000, max_queued=100)
    _open(gate)
    big = _msg(5000)
    gate.enqueue(big)
    m, p = gate.next_to_send()
    gate.lost_connection(strike=True)
    gate.handed_over(m, 1, p, on_wire=False)  # paho said: not connected
    assert big.strikes == 0


def test_an_advertised_packet_limit_refuses_queued_messages_over_it_on_connect():
    gate = SendGate(max_payload=100_000, max_queued=100)
    ok, over = _msg(100), _msg(5000)
    gate.enqueue(ok)
    gate.enqueue(over)
    struck, refused = gate.reopened(4096)
    assert struck == [] and [m for m, _ in refused] == [over]
    assert gate.max_payload < 4096 and gate.next_to_send()[0] is ok


def test_a_probe_paho_could_not_send_gets_no_strike_when_the_drop_is_noticed_later():
    gate = SendGate(max_payload=100_000, max_queued=100)
    _open(gate)
    big = _msg(5000)
    gate.enqueue(big)
    m, p = gate.next_to_send()
    gate.handed_over(m, 1, p, on_wire=False)  # paho: not connected, before the link heard of the drop
    assert gate.lost_connection(strike=True) is None and big.strikes == 0
