"""The dossier parser (pure): envelope -> ExaminationEvent dicts, aliases, joins on MA_LK, and
one test per reason a file cannot become events (XML bombs and external entities included)."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from producers.dossier import (
    DossierRejected,
    Limits,
    encode_dossier,
    event_id_for,
    parse_dossier,
)
from producers.gateway import complete_files
from producers.jsonl import event_from_json
from schemas import SUBJECTS, AvroCodec
from schemas.reasons import GATEWAY_REASONS, gateway_reasons_markdown
from simulation.simulator import CitySimulator, SimulationConfig
from tests.support import factories as f

DEFAULTS = {
    spec["name"]: spec.get("default")
    for spec in AvroCodec().catalog.latest(SUBJECTS.EXAMINATION_EVENT).raw["fields"]
    if "default" in spec
}
#: reasons the parser gives; the gateway gives the others (file_unreadable, dossier_too_large)
PARSER_REASONS = set(GATEWAY_REASONS) - {"file_unreadable", "dossier_too_large"}
TESTED: set[str] = set()


# -- building blocks ------------------------------------------------------------------------
def table(root: str, **fields: object) -> bytes:
    body = "".join(
        f"<{k}>{escape(str(v))}</{k}>" if v is not None else f"<{k}/>" for k, v in fields.items()
    )
    return f"<?xml version='1.0' encoding='utf-8'?><{root}>{body}</{root}>".encode()


def xml1(event: dict) -> bytes:
    return table(
        "TONG_HOP",
        **{
            k.upper(): v
            for k, v in event.items()
            if k not in ("event_id", "referral", "appointment")
        },
    )


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def envelope(
    hoso: list[list[tuple[str, bytes | str]]],
    facility: str = "79001",
    count: int | str | None = None,
    root: str = "GIAMDINHHS",
    prolog: str = "",
) -> bytes:
    """Each HOSO a list of (LOAIHOSO, table bytes or an already-encoded NOIDUNGFILE str)."""
    files = "".join(
        "<HOSO>"
        + "".join(
            f"<FILEHOSO><LOAIHOSO>{kind}</LOAIHOSO><NOIDUNGFILE>"
            f"{content if isinstance(content, str) else b64(content)}</NOIDUNGFILE></FILEHOSO>"
            for kind, content in tables
        )
        + "</HOSO>"
        for tables in hoso
    )
    n = len(hoso) if count is None else count
    return (
        f"<?xml version='1.0' encoding='utf-8'?>{prolog}<{root}><THONGTINDONVI><MACSKCB>"
        f"{facility}</MACSKCB></THONGTINDONVI><THONGTINHOSO><NGAYLAP>202403041700</NGAYLAP>"
        f"<SOLUONGHOSO>{n}</SOLUONGHOSO><DANHSACHHOSO>{files}</DANHSACHHOSO></THONGTINHOSO>"
        f"<CHUKYDONVI/></{root}>"
    ).encode()


def rejected(data: bytes, reason: str, limits: Limits | None = None) -> DossierRejected:
    with pytest.raises(DossierRejected) as info:
        parse_dossier(data, limits)
    assert info.value.reason == reason, info.value
    TESTED.add(reason)
    return info.value


def simulated(n: int = 400) -> list[dict]:
    simulator = CitySimulator(SimulationConfig(events=n, invalid_share=0, seed=7))
    return list(simulator.events())


# -- happy paths ----------------------------------------------------------------------------
def test_round_trip_of_simulated_dossiers_is_exact_and_encodable() -> None:
    events = simulated()
    codec = AvroCodec()
    by_facility: dict[str, list[dict]] = {}
    for event in events:
        by_facility.setdefault(event["ma_cskcb"], []).append(event)
    referrals = appointments = 0
    for facility, group in by_facility.items():
        dossier = parse_dossier(
            encode_dossier(facility, group, created="202401112359", qd3176=facility.endswith("1"))
        )
        assert dossier.facility == facility and dossier.declared == len(group)
        for event in group:
            for name, default in DEFAULTS.items():  # fields added by schema evolution
                event.setdefault(name, default)
            event["event_id"] = event_id_for(event)
        assert dossier.events == group
        codec.encode(SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": facility, "events": dossier.events})
        referrals += sum(1 for e in dossier.events if e["referral"])
        appointments += sum(1 for e in dossier.events if e["appointment"])
    assert referrals and appointments  # the sample exercises XML13 and XML14


def test_event_id_is_the_jsonl_publishers_and_follows_the_content() -> None:
    codec = AvroCodec()
    line = f.exam(1)
    del line["event_id"]
    from_jsonl = event_from_json(json.dumps(line), codec)
    assert event_id_for(from_jsonl) == from_jsonl["event_id"]
    corrected = event_from_json(json.dumps({**line, "ma_benh_chinh": "J18.9"}), codec)
    assert corrected["event_id"] != from_jsonl["event_id"]


def test_vietnamese_text_and_types() -> None:
    event = f.with_appointment(
        f.with_referral(f.exam(1, name="Nguyễn Thị Ánh Tuyết")),
        when=f.BASE_TIME + f.timedelta(days=14),
    )
    dossier = parse_dossier(encode_dossier("79001", [event]))
    parsed = dossier.events[0]
    assert parsed["ho_ten"] == "Nguyễn Thị Ánh Tuyết"
    assert parsed["referral"]["dau_hieu_ls"] == "Sốt cao, ho khan"
    assert parsed["gioi_tinh"] == 1 and isinstance(parsed["gioi_tinh"], int)
    assert parsed["t_tongchi_bv"] == 300_000 and parsed["referral"]["ma_lydo_ct"] == 2
    assert parsed["appointment"]["ngay_hen_kl"] == event["appointment"]["ngay_hen_kl"]


def test_qd3176_names_are_aliases_of_ma_noi_di_den() -> None:
    event = f.with_referral(f.exam(2), destination="79002")
    data = encode_dossier("79001", [event], qd3176=True)
    assert b"MA_CSKCB_DI" in base64.b64decode(data.split(b"<NOIDUNGFILE>")[2].split(b"<")[0])
    referral = parse_dossier(data).events[0]["referral"]
    assert (referral["ma_noi_di"], referral["ma_noi_den"]) == ("79001", "79002")
    # both names filled: the standard's own name wins
    letter = table(
        "CHI_TIEU_GIAYCHUYENTUYEN",
        MA_LK=event["ma_lk"],
        SO_HOSO="1",
        SO_CHUYENTUYEN="CT1",
        MA_NOI_DI="79001",
        MA_CSKCB_DI="79005",
        MA_CSKCB_DEN="79002",
        DAU_HIEU_LS="x",
        QT_BENHLY="y",
        HUONG_DIEU_TRI="z",
        MA_LYDO_CT=1,
        NGAY_CT="202403041000",
    )
    referral = parse_dossier(envelope([[("XML1", xml1(event)), ("XML13", letter)]])).events[0][
        "referral"
    ]
    assert (referral["ma_noi_di"], referral["ma_noi_den"]) == ("79001", "79002")


def test_missing_optional_fields_get_defaults_and_required_text_is_left_to_the_worker() -> None:
    event = f.exam(3)
    fields = {
        k.upper(): v
        for k, v in event.items()
        if k
        not in (
            "event_id",
            "referral",
            "appointment",
            "ma_benh_kt",
            "t_thuoc",
            "ho_ten",
            "so_ngay_dtri",
            "ma_cskcb",
        )
    }
    fields["T_TONGCHI_BV"] = "300000.00"  # decimals of an integral amount are fine
    parsed = parse_dossier(envelope([[("XML1", table("TONG_HOP", **fields))]])).events[0]
    assert parsed["ma_benh_kt"] is None and parsed["t_thuoc"] == 0
    assert parsed["so_ngay_dtri"] == 0 and parsed["t_tongchi_bv"] == 300_000
    assert parsed["ho_ten"] == ""  # the worker dead-letters it: required_field_missing
    assert parsed["ma_cskcb"] == "79001"  # from the envelope
    assert parsed["referral"] is None and parsed["appointment"] is None


def test_other_tables_are_checked_and_ignored_and_an_empty_day_is_fine() -> None:
    event = f.exam(4)
    drugs = b"<CHITIEU_CHITIET_THUOC><DSACH_CHI_TIET_THUOC/></CHITIEU_CHITIET_THUOC>"
    dossier = parse_dossier(envelope([[("XML1", xml1(event)), ("XML2", drugs)]]))
    assert len(dossier.events) == 1 and dossier.other_tables == {"XML2": 1}
    assert parse_dossier(envelope([])).events == []


def test_namespaces_and_whitespace_around_base64_are_tolerated() -> None:
    event = f.exam(5)
    wrapped = "\n".join(b64(xml1(event))[i : i + 76] for i in range(0, 4000, 76))
    data = envelope([[("XML1", wrapped)]]).replace(
        b"<GIAMDINHHS>", b'<GIAMDINHHS xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    )
    assert parse_dossier(data).events[0]["ma_lk"] == event["ma_lk"]


# -- rejections, one per reason -------------------------------------------------------------
def test_xml_malformed() -> None:
    data = encode_dossier("79001", [f.exam(10)])
    rejected(data[: len(data) // 2], "xml_malformed")
    rejected(b"\xff\xfe not xml", "xml_malformed")


EXTERNAL = '<!DOCTYPE GIAMDINHHS [<!ENTITY x SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize("prolog", [f.BOMB, EXTERNAL, '<!DOCTYPE GIAMDINHHS SYSTEM "http://x/d">'])
def test_xml_bomb_external_entity_and_any_dtd_are_refused(prolog: str) -> None:
    data = envelope([[("XML1", xml1(f.exam(11)))]], prolog=prolog)
    data = data.replace(b"<NGAYLAP>202403041700", b"<NGAYLAP>&d;&x;")
    rejected(data, "xml_forbidden")


def test_dtd_inside_a_table_is_refused() -> None:
    inner = xml1(f.exam(12)).replace(
        b"?><TONG_HOP>", b"?>" + f.BOMB.replace("GIAMDINHHS", "TONG_HOP").encode() + b"<TONG_HOP>"
    )
    inner = inner.replace(b"<HO_TEN>Nguy", b"<HO_TEN>&d;Nguy")
    rejected(envelope([[("XML1", inner)]]), "xml_forbidden")


def test_envelope_invalid() -> None:
    hoso = [[("XML1", xml1(f.exam(13)))]]
    rejected(envelope(hoso, root="HOSO_KCB"), "envelope_invalid")
    rejected(envelope(hoso, facility=""), "envelope_invalid")
    rejected(envelope(hoso, count="mot"), "envelope_invalid")
    no_content = (
        envelope(hoso).replace(b"<NOIDUNGFILE>", b"<X>").replace(b"</NOIDUNGFILE>", b"</X>")
    )
    rejected(no_content, "envelope_invalid")


def test_count_mismatch() -> None:
    rejected(envelope([[("XML1", xml1(f.exam(14)))]], count=2), "count_mismatch")


def test_base64_invalid_and_too_large() -> None:
    rejected(envelope([[("XML1", "PD94bWw*not-base64")]]), "base64_invalid")
    rejected(envelope([[("XML1", xml1(f.exam(15))), ("XML2", "abc")]]), "base64_invalid")
    rejected(
        envelope([[("XML1", xml1(f.exam(15)))]]), "base64_too_large", Limits(max_table_base64=100)
    )


def test_file_too_large() -> None:
    rejected(
        envelope([[("XML1", xml1(f.exam(16)))]]), "file_too_large", Limits(max_file_bytes=1000)
    )


def test_table_malformed() -> None:
    event = f.exam(17)
    rejected(envelope([[("XML1", b"<TONG_HOP><MA_LK>x</TONG_HOP>")]]), "table_malformed")
    rejected(
        envelope([[("XML1", xml1(event).replace(b"TONG_HOP", b"CHI_TIEU_GIAYHEN_KHAMLAI"))]]),
        "table_malformed",
    )


def test_xml1_missing_duplicated_tables_and_episodes() -> None:
    event = f.with_appointment(f.exam(18), when=f.BASE_TIME + f.timedelta(days=7))
    appointment = table(
        "CHI_TIEU_GIAYHEN_KHAMLAI",
        MA_LK=event["ma_lk"],
        SO_GIAYHEN_KL="HK1",
        NGAY_HEN_KL="202403110800",
    )
    rejected(envelope([[("XML14", appointment)]]), "xml1_missing")
    rejected(envelope([[("XML1", xml1(event)), ("XML1", xml1(event))]]), "table_duplicated")
    rejected(
        envelope([[("XML1", xml1(event)), ("XML14", appointment), ("XML14", appointment)]]),
        "table_duplicated",
    )
    rejected(envelope([[("XML1", xml1(event))], [("XML1", xml1(event))]]), "episode_duplicated")


def test_ma_lk_missing_and_tables_that_do_not_join() -> None:
    event = f.exam(19)
    no_key = dict(event, ma_lk=None)
    rejected(envelope([[("XML1", xml1(no_key))]]), "ma_lk_missing")
    appointment = table("CHI_TIEU_GIAYHEN_KHAMLAI", SO_GIAYHEN_KL="HK1", NGAY_HEN_KL="202403110800")
    rejected(envelope([[("XML1", xml1(event)), ("XML14", appointment)]]), "ma_lk_missing")
    other = table(
        "CHI_TIEU_GIAYHEN_KHAMLAI",
        MA_LK="LK-OF-ANOTHER-EPISODE",
        SO_GIAYHEN_KL="HK1",
        NGAY_HEN_KL="202403110800",
    )
    rejected(envelope([[("XML1", xml1(event)), ("XML14", other)]]), "tables_do_not_join")


def test_facility_mismatch() -> None:
    event = f.exam(20, facility="79005")
    rejected(envelope([[("XML1", xml1(event))]], facility="79001"), "facility_mismatch")
    ok = f.exam(21)
    appointment = table(
        "CHI_TIEU_GIAYHEN_KHAMLAI",
        MA_LK=ok["ma_lk"],
        MA_CSKCB="79002",
        SO_GIAYHEN_KL="HK1",
        NGAY_HEN_KL="202403110800",
    )
    rejected(envelope([[("XML1", xml1(ok)), ("XML14", appointment)]]), "facility_mismatch")


@pytest.mark.parametrize(
    "field,value",
    [
        ("gioi_tinh", "nam"),
        ("gioi_tinh", None),
        ("t_tongchi_bv", "1e5"),
        ("t_bhtt", "12.5"),
        ("nam_qt", str(2**31)),
    ],
)
def test_number_invalid(field: str, value: str | None) -> None:
    event = copy.deepcopy(f.exam(22))
    event[field] = value
    error = rejected(envelope([[("XML1", xml1(event))]]), "number_invalid")
    assert field.upper() in error.message and "Nguyễn" not in error.message


def test_fields_added_by_schema_evolution_are_read_by_their_upper_case_name() -> None:
    shape = AvroCodec().catalog.latest(SUBJECTS.EXAMINATION_EVENT).raw["fields"]
    doubles = [s["name"] for s in shape if "double" in s["type"] or "float" in s["type"]]
    if not doubles:
        pytest.skip("the newest ExaminationEvent has no floating-point field")
    event = dict(f.exam(23), **{doubles[0]: "62.5"})
    assert parse_dossier(envelope([[("XML1", xml1(event))]])).events[0][doubles[0]] == 62.5
    event[doubles[0]] = "62,5 kg"
    rejected(envelope([[("XML1", xml1(event))]]), "number_invalid")


def test_every_reason_is_documented() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text("utf-8")
    match = re.search(
        r"<!-- gateway-reasons:begin -->\n(.*?)<!-- gateway-reasons:end -->", page, re.S
    )
    assert match, "docs/gateway.md lacks the gateway-reasons markers"
    assert match.group(1) == gateway_reasons_markdown(), "stale: run `make docs`"


def test_every_parser_reason_has_a_test() -> None:
    # runs last in this module (pytest keeps definition order)
    assert PARSER_REASONS <= TESTED, PARSER_REASONS - TESTED


# -- files still being written --------------------------------------------------------------
def test_complete_files_ignores_partial_hidden_and_fresh_files(tmp_path: Path) -> None:
    for name in ("b.xml", "a.XML", "c.xml.tmp", "d.xml.part", ".e.xml", "notes.txt"):
        (tmp_path / name).write_bytes(b"<x/>")
    (tmp_path / "sub.xml").mkdir()
    mtime = (tmp_path / "b.xml").stat().st_mtime
    complete, growing = complete_files(tmp_path, settle_s=5, now=mtime + 10)
    assert [p.name for p in complete] == ["a.XML", "b.xml"] and growing == []
    complete, growing = complete_files(tmp_path, settle_s=5, now=mtime + 1)
    assert complete == [] and [p.name for p in growing] == ["a.XML", "b.xml"]
