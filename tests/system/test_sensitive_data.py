"""Names and citizen IDs stay where they belong.

A short run with known, seeded names, citizen IDs (CCCD) and HI card numbers, at DEBUG log
level, then a scan of every worker and sink log line, every metric the processes serve,
the dead-letter reason texts, the campaign counters' labels, and every topic of the
deployment except the ones that carry personal data by design:

* ``examinations`` (the facilities' input), ``health-book`` (the citizen's own record) and
  ``dead-letter`` (the original bytes, for repair): access-controlled (ACLs in the compose
  stack);
* ``examinations-by-citizen``: internal, written and read only by the workers; it carries
  the validated event itself because the stateful stage writes the health-book records
  from it (a pseudonymised copy would need a second, stateful join with the input).

Everything else, the workers' state changelog included, must not contain them.
"""

from __future__ import annotations

import urllib.request

import pytest
from confluent_kafka.admin import AdminClient

from ehb.commands.local import DeploymentFactory
from ehb.kafka import base_config
from schemas.topics import APPOINTMENTS, HEALTH_BOOK, REFERRALS
from tests.support import factories as f

pytestmark = pytest.mark.integration

BY_DESIGN = ("examinations", "health-book", "dead-letter", "examinations-by-citizen")


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics",  # noqa: S310 - loopback
        timeout=5,
    ) as response:
        return response.read().decode()


def test_no_names_or_citizen_ids_outside_their_topics(deploy: DeploymentFactory) -> None:
    d = deploy(partitions=2, log_level="DEBUG")
    at = f.BASE_TIME
    events, secrets = [], []
    for i in range(8):
        n = 907_310 + i
        event = f.exam(n, name=f"Lê Thị Kín Đáo {i}", admitted=at + f.timedelta(hours=i))
        if i == 1:
            event = f.with_referral(event)
        if i == 2:
            event = f.with_appointment(event, when=at + f.timedelta(days=10))
        events.append(event)
        secrets += [event["ho_ten"], event["so_cccd"], event["ma_the_bhyt"]]
    # invalid ones: the reason texts must not quote the personal values either
    bad_id = f.exam(907_390, name="Võ Văn Mật Danh", so_cccd="07918590")
    unknown_facility = f.exam(907_391, name="Đinh Thị Ẩn Số", facility="79999")
    bad_card = f.exam(907_392, name="Hồ Văn Giấu Tên", ma_the_bhyt="ZZ9791234567890")
    for event in (bad_id, unknown_facility, bad_card):
        secrets += [event["ho_ten"], event["so_cccd"], event["ma_the_bhyt"]]
    events += [bad_id, unknown_facility, bad_card]
    d.publish(events, batch_size=4)
    d.wait_for_events(len(events))
    assert d.count("dead_letters") == 3
    needles = [s.encode() for s in secrets]

    def leaks(blob: bytes) -> list[str]:
        return [n.decode() for n in needles if n in blob]

    # every log line of the workers and the sink
    logs = sorted(d.children.log_dir.glob("*.log"))
    assert logs and any("worker" in p.name for p in logs) and any("sink" in p.name for p in logs)
    for path in logs:
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            assert not leaks(line), f"{path.name}:{number}: {line[:300]!r}"

    # every metric (names, label values, help texts) of every process
    for child in [*d.workers, d.sink]:
        assert child is not None
        text = _metrics_text(child.metrics_port).encode()
        assert not leaks(text), f"{child.name} /metrics: {leaks(text)}"

    # dead-letter reason texts and the campaign counters' labels in PostgreSQL
    for (message,) in d.query("SELECT message FROM dead_letters"):
        assert not leaks(message.encode()), message
    for metric, label in d.query("SELECT metric, label FROM campaign_counters"):
        assert not leaks(f"{metric} {label}".encode())

    # every topic of this deployment but the ones that carry personal data by design
    admin = AdminClient(base_config(d.settings))
    names = [
        t
        for t in admin.list_topics(timeout=10).topics
        if t.startswith(d.settings.topic_prefix) or t.startswith(d.settings.worker_group)
    ]
    exempt = {d.settings.topic(t) for t in BY_DESIGN}
    scanned = sorted(set(names) - exempt)
    assert d.settings.topic(REFERRALS) in scanned
    assert d.settings.topic(APPOINTMENTS) in scanned
    assert any(t.endswith("-changelog") for t in scanned), names
    prefix = d.settings.topic_prefix
    for topic in scanned:
        logical = topic[len(prefix) :] if topic.startswith(prefix) else None
        messages = d.read_topic(logical) if logical else _read_raw(d, topic)
        for m in messages:
            for part in (m.key() or b"", m.value() or b""):
                assert not leaks(part), f"{topic}@{m.offset()}: {leaks(part)}"
    # the exempt ones really hold them (the scan would have found them)
    health_book = b"".join(m.value() or b"" for m in d.read_topic(HEALTH_BOOK))
    assert needles[0] in health_book


def _read_raw(d, topic: str):  # noqa: ANN001, ANN202 - test helper
    """read_topic for a topic outside the deployment's prefix (Faust's internal topics)."""
    original = d.settings
    d.settings = original.model_copy(update={"topic_prefix": ""})
    try:
        return d.read_topic(topic)
    finally:
        d.settings = original
