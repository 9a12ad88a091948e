"""Sinks by name: the relay's fd order on one side, names everywhere else."""
from kadeploy.data.sinks import CONSUMER, DIGEST, Sinks


def make():
    s = Sinks()
    s.add(CONSUMER, 10)
    s.add(DIGEST, 11)
    s.add(7, 12)      # a child by node id
    s.add(9, 13)
    return s


def test_order_is_the_relays():
    s = make()
    assert s.fds() == [10, 11, 12, 13] and s.names() == [CONSUMER, DIGEST, 7, 9]
    assert s.index(7) == 2 and 9 in s and 8 not in s


def test_counters_and_sent_by_name():
    s = make()
    c = s.counters()
    assert len(c) == 5
    c[1 + 2] = 1234
    assert s.sent(c, 7) == 1234 and s.sent(c, CONSUMER) == 0


def test_retire_removes_the_failed_and_names_them():
    s = make()
    boom = OSError(32, "Broken pipe")
    failed = s.retire([None, None, boom, None])
    assert failed == {7: boom}
    assert s.names() == [CONSUMER, DIGEST, 9] and s.fds() == [10, 11, 13]
    # The next run's errors line up with what is left.
    assert s.errors([None, boom, None]) == {CONSUMER: None, DIGEST: boom, 9: None}
