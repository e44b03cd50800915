"""The gateway's withdrawal list (``HUYHOSO``): parsed whole or rejected with a reason."""

from __future__ import annotations

import pytest

from producers.errors import DossierRejected
from producers.withdrawals import encode_withdrawals, is_withdrawal_list, parse_withdrawals
from schemas import SUBJECTS, AvroCodec
from tests.support import factories as f


def test_a_list_round_trips_and_encodes() -> None:
    items = [
        {"ma_lk": "LK1", "so_cccd": f.citizen_id(1, 1, 1985), "ly_do": "gửi nhầm"},
        {"ma_lk": "LK2", "so_cccd": f.citizen_id(2, 2, 1990)},
    ]
    data = encode_withdrawals("79001", items)
    assert is_withdrawal_list(data)
    facility, withdrawals = parse_withdrawals(data)
    assert facility == "79001"
    assert [(w["ma_lk"], w["ly_do"]) for w in withdrawals] == [("LK1", "gửi nhầm"), ("LK2", "")]
    assert len({w["event_id"] for w in withdrawals}) == 2
    assert parse_withdrawals(data)[1][0]["event_id"] == withdrawals[0]["event_id"]  # stable
    AvroCodec().encode(
        SUBJECTS.EXAMINATION_WITHDRAWAL_BATCH, {"ma_cskcb": facility, "withdrawals": withdrawals}
    )


def test_a_dossier_is_not_a_withdrawal_list() -> None:
    from producers.dossier import encode_dossier

    assert not is_withdrawal_list(encode_dossier("79001", [f.exam(1)]))
    assert not is_withdrawal_list(b"not xml at all")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b"<HUYHOSO><HOSO><MA_LK>A</MA_LK><SO_CCCD>1</SO_CCCD></HOSO></HUYHOSO>",
            "envelope_invalid",
        ),
        (
            b"<HUYHOSO><MACSKCB>79001</MACSKCB><HOSO><MA_LK>A</MA_LK></HOSO></HUYHOSO>",
            "envelope_invalid",
        ),
        (
            b"<HUYHOSO><MACSKCB>79001</MACSKCB>"
            b"<HOSO><MA_LK>A</MA_LK><SO_CCCD>1</SO_CCCD></HOSO>"
            b"<HOSO><MA_LK>A</MA_LK><SO_CCCD>2</SO_CCCD></HOSO></HUYHOSO>",
            "episode_duplicated",
        ),
        (b"<HUYHOSO><MACSKCB>79001</MACSKCB>", "xml_malformed"),
        (f.BOMB.encode() + b"<HUYHOSO><MACSKCB>&d;</MACSKCB></HUYHOSO>", "xml_forbidden"),
    ],
    ids=["no facility", "no citizen id", "an episode twice", "truncated", "entity bomb"],
)
def test_a_bad_list_is_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DossierRejected) as raised:
        parse_withdrawals(data)
    assert raised.value.reason == reason
