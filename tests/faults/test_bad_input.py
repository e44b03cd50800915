"""Bad input at the broker boundary and at the XML gateway: every case handled without a
crash or a hang, with a dead letter (or a rejected file) of the right reason, and the next
good event still processed. The pure checks are instant; the pipeline runs take one
deployment each and run in the default suite too."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from ehb.commands.local import DeploymentFactory, wait_until
from ehb.privacy import CitizenKeyer
from producers.dossier import DossierRejected, encode_dossier, parse_dossier
from producers.gateway import Gateway
from schemas import SUBJECTS, AvroCodec
from schemas.reference import FacilityRegistry
from schemas.topics import EXAMINATIONS
from streams.intake import Intake, SourceMessage
from tests.faults.conftest import FaultReport
from tests.faults.corpus import BadFile, BadInput, broker_corpus, gateway_corpus
from tests.support import factories as f

pytestmark = pytest.mark.faults  # in make faults, and (not slow) in make test too

BROKER = broker_corpus()
GATEWAY = gateway_corpus()
#: a case takes milliseconds: a hang or an allocation bomb fails it at this bound (pytest-timeout,
#: not a timed assertion: a stall of a loaded machine is not a failure of the code)
PER_CASE_S = 60.0


def test_the_corpora_are_large_enough() -> None:
    assert len({c.kind for c in BROKER}) == len(BROKER) >= 30
    assert len({c.kind for c in GATEWAY}) == len(GATEWAY) >= 20


@pytest.mark.timeout(PER_CASE_S)
@pytest.mark.parametrize("case", BROKER, ids=[c.kind for c in BROKER])
def test_broker_case_in_the_intake(case: BadInput) -> None:
    codec = AvroCodec()
    intake = Intake(codec, FacilityRegistry.from_reference(), CitizenKeyer(b"k" * 32), 4)
    result = intake.process([SourceMessage(case.value, "ehb.examinations", 0, 7, 0)])
    reasons = [dead["reason"] for _, dead in result.dead_letters]
    assert len(reasons) == case.dead and set(reasons) <= case.reasons, reasons
    assert result.accepted == case.accepted
    assert result.events_in == result.accepted + len(result.dead_letters)
    encode_dead_letter = codec.writer(SUBJECTS.DEAD_LETTER)
    for _, dead in result.dead_letters:  # the worker must be able to send it
        assert dead["source_offset"] == 7
        encode_dead_letter(dead)
    # the next good event goes through the same intake
    after = intake.process(
        [
            SourceMessage(
                codec.encode(SUBJECTS.EXAMINATION_EVENT, f.exam()), "ehb.examinations", 0, 8, 0
            )
        ]
    )
    assert after.accepted == 1 and not after.dead_letters


@pytest.mark.timeout(PER_CASE_S)
@pytest.mark.parametrize("case", GATEWAY, ids=[c.kind for c in GATEWAY])
def test_gateway_case_in_the_parser(case: BadFile) -> None:
    codec = AvroCodec()
    try:
        dossier = parse_dossier(case.data)
    except DossierRejected as exc:
        reason, events = exc.reason, []
    else:
        reason, events = None, dossier.events
    assert (reason, len(events)) == (case.reason, case.episodes)
    for event in events:
        codec.encode(SUBJECTS.EXAMINATION_EVENT, event)
        assert "root:" not in str(event)  # nothing of /etc/passwd was read in


@pytest.mark.integration
def test_broker_corpus_through_the_pipeline(
    deploy: DeploymentFactory, fault_report: FaultReport
) -> None:
    """Every bad message followed by a good one on ONE partition: the good ones all land, so
    no bad message stalled the partition; each bad one has its dead letter(s)."""
    d = deploy(partitions=1)
    good = [f.exam(facility="79002") for _ in BROKER]
    values: list[bytes | None] = []
    for case, event in zip(BROKER, good, strict=True):
        values += [case.value, d.codec.encode(SUBJECTS.EXAMINATION_EVENT, event)]
    d.produce_raw("examinations", values, key=b"79001")
    dead_expected = sum(c.dead for c in BROKER)
    rows_expected = len(good) + sum(c.accepted for c in BROKER)
    wait_until(
        lambda: (
            d.count("dead_letters") >= dead_expected
            and d.count("health_book_entries") >= rows_expected
        ),
        120,
        message="every case dead-lettered and every good event persisted",
    )
    offsets = [m.offset() for m in sorted(d.read_topic(EXAMINATIONS), key=lambda m: m.offset())]
    case_at = {offsets[2 * i]: case for i, case in enumerate(BROKER)}
    got: dict[str, list[str]] = defaultdict(list)
    for offset, reason in d.query("SELECT source_offset, reason FROM dead_letters"):
        assert offset in case_at, f"a dead letter for offset {offset}, a good event"
        got[case_at[offset].kind].append(reason)
    wrong = {
        c.kind: got.get(c.kind, [])
        for c in BROKER
        if len(got.get(c.kind, [])) != c.dead or not set(got.get(c.kind, [])) <= c.reasons
    }
    assert not wrong
    persisted = {row[0] for row in d.query("SELECT event_id FROM health_book_entries")}
    assert {e["event_id"] for e in good} <= persisted
    assert d.count("health_book_entries") == rows_expected
    names = {row[0] for row in d.query("SELECT ho_ten FROM health_book_entries")}
    assert any("DROP TABLE" in n and "\u202e" in n for n in names)  # stored verbatim
    fault_report.corpus["broker boundary (examinations topic)"] = {
        "kinds": len(BROKER),
        "cases": len(BROKER),
        "ok": len(BROKER) - len(wrong),
        "dead_letters": dict(Counter(r for rs in got.values() for r in rs)),
    }


@pytest.mark.integration
def test_gateway_corpus_through_the_gateway(
    deploy: DeploymentFactory, fault_report: FaultReport, tmp_path: Path
) -> None:
    """Bad files interleaved with good ones in one drop directory: each bad file is moved aside
    with its reason, every good (and hostile-but-valid) file is published and persisted."""
    d = deploy()
    drop = tmp_path / "drop"
    drop.mkdir()
    good_events = []
    for i, case in enumerate(GATEWAY):
        (drop / f"{i:03d}-a-bad.xml").write_bytes(case.data)
        event = f.exam(facility="79002")
        good_events.append(event)
        (drop / f"{i:03d}-b-good.xml").write_bytes(encode_dossier("79002", [event]))
    with Gateway(d.settings) as gateway:
        report = gateway.run(drop, settle_s=0)
    outcomes = {o.file: o for o in report.outcomes}
    wrong = {}
    for i, case in enumerate(GATEWAY):
        bad = outcomes[f"{i:03d}-a-bad.xml"]
        status = "rejected" if case.reason else "published"
        if (bad.status, bad.reason) != (status, case.reason):
            wrong[case.kind] = (bad.status, bad.reason)
        assert outcomes[f"{i:03d}-b-good.xml"].status == "published"
    assert not wrong
    published = len(good_events) + sum(c.episodes for c in GATEWAY)
    wait_until(
        lambda: d.count("health_book_entries") >= published,
        120,
        message="the published files' episodes persisted",
    )
    persisted = set(d.query("SELECT ma_cskcb, ma_lk FROM health_book_entries"))
    assert {(e["ma_cskcb"], e["ma_lk"]) for e in good_events} <= persisted
    assert d.count("health_book_entries") == published
    fault_report.corpus["XML gateway (dossier files)"] = {
        "kinds": len(GATEWAY),
        "cases": len(GATEWAY),
        "ok": len(GATEWAY) - len(wrong),
        "rejections": dict(Counter(o.reason for o in report.outcomes if o.reason)),
    }


def test_a_json_line_with_a_number_beyond_a_long_is_a_bad_line_not_a_crash() -> None:
    """Found by fuzzing: fastavro's OverflowError escaped ``ehb publish FILE.jsonl``."""
    import json

    from producers.jsonl import event_from_json

    line = json.dumps(dict(f.exam(), so_ngay_dtri=2**63))
    with pytest.raises(ValueError, match="does not fit the schema"):
        event_from_json(line, AvroCodec())
