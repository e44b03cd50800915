"""Bad input at the broker boundary: a corpus of hostile or broken ``examinations`` messages,
each with the dead letters it must produce (reason codes) and the events that must still get
through. Built from one valid event, broken one way at a time, so each case names exactly
one defect."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from schemas import SUBJECTS, AvroCodec
from schemas.codec import wire_header
from tests.support import factories as f

#: a decode failure whose exact reason depends on where the bytes go wrong
UNDECODABLE = frozenset({"malformed_avro", "trailing_bytes"})


@dataclass(frozen=True)
class BadInput:
    kind: str
    value: bytes | None
    #: acceptable reason codes of its dead letter(s)
    reasons: frozenset[str]
    #: dead letters it must produce
    dead: int = 1
    #: events it carries that must be accepted
    accepted: int = 0


def _varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def broker_corpus(codec: AvroCodec | None = None, seed: int = 6) -> list[BadInput]:
    codec = codec or AvroCodec()
    rng = random.Random(seed)
    event_id = codec.wire_id(codec.catalog.latest(SUBJECTS.EXAMINATION_EVENT))

    def encode(event: dict[str, Any]) -> bytes:
        return codec.encode(SUBJECTS.EXAMINATION_EVENT, event)

    def batch(facility: str, events: list[dict[str, Any]]) -> bytes:
        return codec.encode(SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": facility, "events": events})

    def one(
        kind: str,
        reason: str,
        mutate: Callable[[dict[str, Any]], None] | None = None,
        **changes: Any,
    ) -> BadInput:
        event = f.exam(**changes)
        if mutate is not None:
            mutate(event)
        return BadInput(kind, encode(event), frozenset({reason}))

    good = encode(f.exam())
    body = good[5:]
    at = f.BASE_TIME
    cases = [
        # -- the message itself ----------------------------------------------------------
        BadInput("tombstone (no value)", None, frozenset({"empty_message"})),
        BadInput("empty value", b"", frozenset({"empty_message"})),
        BadInput(
            "garbage bytes", bytes([0x7F]) + rng.randbytes(1023), frozenset({"bad_magic_byte"})
        ),
        BadInput(
            "JSON instead of Avro",
            b'{"ma_lk": "LK1", "ho_ten": "x"}',
            frozenset({"bad_magic_byte"}),
        ),
        BadInput(
            "an XML dossier instead of Avro",
            b'<?xml version="1.0"?><GIAMDINHHS/>',
            frozenset({"bad_magic_byte"}),
        ),
        BadInput("wrong magic byte (0x01)", b"\x01" + good[1:], frozenset({"bad_magic_byte"})),
        BadInput("truncated header (3 bytes)", b"\x00\x00\x00", frozenset({"truncated_header"})),
        BadInput("header without a body", wire_header(event_id), frozenset({"malformed_avro"})),
        BadInput(
            "unknown schema id 999", wire_header(999) + body, frozenset({"unknown_schema_id"})
        ),
        BadInput(
            "schema id 2^32-1", b"\x00\xff\xff\xff\xff" + body, frozenset({"unknown_schema_id"})
        ),
        BadInput(
            "a HealthBookRecord's schema on the input topic",
            wire_header(codec.wire_id(codec.catalog.latest(SUBJECTS.HEALTH_BOOK_RECORD))) + body,
            frozenset({"unexpected_schema"}),
        ),
        BadInput(
            "a DeadLetter's schema on the input topic",
            wire_header(codec.wire_id(codec.catalog.latest(SUBJECTS.DEAD_LETTER))) + body,
            frozenset({"unexpected_schema"}),
        ),
        BadInput("truncated body (half)", good[: 5 + len(body) // 2], UNDECODABLE),
        BadInput(
            "over-long body (7 extra bytes)", good + b"\x00extra!", frozenset({"trailing_bytes"})
        ),
        BadInput("two records in one message", good + body, frozenset({"trailing_bytes"})),
        BadInput("negative string length", wire_header(event_id) + _varint(-5) + body, UNDECODABLE),
        BadInput(
            "string length 2^40 (allocation bomb)",
            wire_header(event_id) + _varint(2**40) + b"x" * 64,
            UNDECODABLE,
        ),
        BadInput(
            "array of 2^31 events (allocation bomb)",
            wire_header(codec.wire_id(codec.catalog.latest(SUBJECTS.EXAMINATION_BATCH)))
            + _varint(5)
            + b"79001"
            + _varint(2**31)
            + body,
            UNDECODABLE,
        ),
        BadInput(
            "invalid UTF-8 in a string (CP1258 bytes)",
            good.replace(
                "Nguyễn Văn An".encode(), "Nguy\xean V\xe3n An".encode("latin-1") + b"\xd2\xd2\xd2"
            ),
            UNDECODABLE,
        ),
        BadInput(
            "union branch 7 of a 2-branch union",
            _with_union_index(codec, f.exam(), "matinh_cu_tru", 7),
            UNDECODABLE,
        ),
        BadInput(
            "wrong types: GIOI_TINH written as a string",
            _with_wrong_type(codec, f.exam()),
            UNDECODABLE,
        ),
        # -- required fields, sizes, text ------------------------------------------------
        one("missing MA_LK (empty)", "required_field_missing", ma_lk=""),
        one("missing HO_TEN (blank)", "required_field_missing", name="   "),
        one(
            "referral without QT_BENHLY",
            "required_field_missing",
            mutate=lambda e: _referral(e, qt_benhly=""),
        ),
        one("HO_TEN of 300 characters", "text_too_long", name="Nguyễn " * 43),
        one("MA_LK of 101 characters", "text_too_long", ma_lk="L" * 101),
        one("event id of 200 characters", "text_too_long", event_id="e" * 200),
        one(
            "clinical signs of 500 kB",
            "text_too_long",
            mutate=lambda e: _referral(e, dau_hieu_ls="Sốt " * 125_000),
        ),
        one("NUL character in HO_TEN", "text_nul_character", name="Nguyễn\x00Văn An"),
        # -- codes -------------------------------------------------------------------------
        one("GIOI_TINH 9", "code_not_in_list", gioi_tinh=9),
        one("GIOI_TINH 2^31-1", "code_not_in_list", gioi_tinh=2**31 - 1),
        one("MA_LOAI_KCB 11", "code_not_in_list", ma_loai_kcb="11"),
        one("KET_QUA_DTRI 0", "code_not_in_list", ket_qua_dtri=0),
        one(
            "referral reason MA_LYDO_CT 7",
            "code_not_in_list",
            mutate=lambda e: _referral(e, ma_lydo_ct=7),
        ),
        one("ICD-10 'XYZ' as main diagnosis", "icd10_main_invalid", ma_benh_chinh="XYZ"),
        one(
            "13 secondary diagnoses", "icd10_secondary_invalid", ma_benh_kt=";".join(["J06.9"] * 13)
        ),
        one("facility code 7900A", "facility_code_invalid", ma_dkbd="7900A"),
        one("facility not in the registry", "facility_unknown", facility="79999"),
        one("HI card with group ZZ", "hi_card_format", ma_the_bhyt="ZZ479000000001"),
        one("citizen ID of 11 digits", "citizen_id_format", so_cccd="07908500000"),
        one("citizen ID in Arabic-Indic digits", "citizen_id_format", so_cccd="٠٧٩٠٨٥٠٠٠٠٠١"),
        one("citizen ID province 099", "citizen_id_province", so_cccd="099085000001"),
        one("citizen ID sex digit disagrees", "citizen_id_sex_century", so_cccd="079185000001"),
        # -- dates -------------------------------------------------------------------------
        one("30 February", "date_invalid", ngay_vao="202402300800"),
        one("month 13", "date_invalid", ngay_ra="202413010800"),
        one("ISO 8601 instead of yyyymmddHHMM", "date_invalid", ngay_vao="2024-03-04T08:00"),
        one("full-width digits in a date", "date_invalid", ngay_vao="２０２４０３０４０８００"),
        one(
            "discharge before admission",
            "date_order",
            ngay_vao="202403050800",
            ngay_ra="202403040800",
        ),
        one("born after admission", "date_order", year=2024),
        one("discharge in 2099", "date_in_future", ngay_ra="209901010800"),
        one(
            "appointment before discharge",
            "appointment_before_discharge",
            mutate=lambda e: e.update(f.with_appointment(e, when=at - timedelta(days=1))),
        ),
        one(
            "referral to itself",
            "referral_same_facility",
            mutate=lambda e: _referral(e, ma_noi_den="79001"),
        ),
        # -- money -------------------------------------------------------------------------
        one("negative drugs total", "money_negative", t_thuoc=-1),
        one(
            "insurer pays more than the total", "money_insurer_exceeds_total", t_tongchi_bh=300_001
        ),
        # -- batches -----------------------------------------------------------------------
        BadInput("empty batch", batch("79001", []), frozenset({"empty_batch"})),
        BadInput(
            "an event of 79002 in a batch of 79001",
            batch("79001", [f.exam(facility="79002")]),
            frozenset({"batch_facility_mismatch"}),
        ),
        BadInput(
            "one bad event among three good ones",
            batch("79001", [f.exam(), f.exam(ma_benh_chinh="06.9J"), f.exam()]),
            frozenset({"icd10_main_invalid"}),
            accepted=2,
        ),
        # -- hostile but valid: must be accepted, stored verbatim ---------------------------
        BadInput(
            "mojibake (valid UTF-8)",
            encode(f.exam(name="Nguyá»…n VÄƒn An")),
            frozenset(),
            dead=0,
            accepted=1,
        ),
        BadInput(
            "SQL, quotes, RTL override, zero-width, emoji",
            encode(f.exam(name='Robert\'); DROP TABLE health_book_entries;-- \u202e\u200b😷 "x"')),
            frozenset(),
            dead=0,
            accepted=1,
        ),
        BadInput(
            "largest money amounts (2^63-1)",
            encode(
                f.exam(
                    t_thuoc=2**63 - 1,
                    t_vtyt=2**63 - 1,
                    t_tongchi_bv=2**63 - 1,
                    t_tongchi_bh=0,
                    t_bhtt=0,
                    t_bntt=2**63 - 1,
                    t_bncct=0,
                )
            ),
            frozenset(),
            dead=0,
            accepted=1,
        ),
    ]
    return cases


def _referral(event: dict[str, Any], **changes: Any) -> None:
    event.update(f.with_referral(event))
    event["referral"].update(changes)


def _with_union_index(codec: AvroCodec, event: dict[str, Any], field: str, index: int) -> bytes:
    """``event`` with the union branch index of ``field`` replaced by ``index``."""
    marker = "\x1e"  # a value unlikely elsewhere, to find the field's bytes
    probe = copy.deepcopy(event)
    probe[field] = marker
    encoded = codec.encode(SUBJECTS.EXAMINATION_EVENT, probe)
    where = encoded.index(_varint(1) + _varint(1) + marker.encode())
    return encoded[:where] + _varint(index) + encoded[where + 1 :]


def _with_wrong_type(codec: AvroCodec, event: dict[str, Any]) -> bytes:
    """GIOI_TINH (an int) written as the string "nam": what a writer with the wrong schema
    sends."""
    probe = copy.deepcopy(event)
    probe["gioi_tinh"] = 77  # a marker: zig-zag 77 = 0x9a 0x01
    encoded = codec.encode(SUBJECTS.EXAMINATION_EVENT, probe)
    marker = _varint(77)
    assert encoded.count(marker) == 1
    return encoded.replace(marker, _varint(3) + b"nam")


# -- the XML gateway -------------------------------------------------------------------------
@dataclass(frozen=True)
class BadFile:
    kind: str
    data: bytes
    #: the gateway's rejection reason; None: the file must be published (hostile but valid)
    reason: str | None
    #: episodes it must publish when accepted
    episodes: int = 0


def _b64(content: bytes) -> str:
    import base64

    return base64.b64encode(content).decode()


def _xml1(event: dict[str, Any], extra: str = "") -> bytes:
    from xml.sax.saxutils import escape

    body = "".join(
        f"<{k.upper()}>{escape(str(v))}</{k.upper()}>" if v is not None else f"<{k.upper()}/>"
        for k, v in event.items()
        if k not in ("event_id", "referral", "appointment")
    )
    return f"<?xml version='1.0' encoding='utf-8'?><TONG_HOP>{body}{extra}</TONG_HOP>".encode()


def _envelope(
    tables: list[tuple[str, str]],
    *,
    facility: str = "79001",
    count: int = 1,
    prolog: str = "",
    encoding: str = "utf-8",
    inside: str = "",
) -> str:
    files = "".join(
        f"<FILEHOSO><LOAIHOSO>{kind}</LOAIHOSO><NOIDUNGFILE>{content}</NOIDUNGFILE></FILEHOSO>"
        for kind, content in tables
    )
    return (
        f"<?xml version='1.0' encoding='{encoding}'?>{prolog}<GIAMDINHHS>{inside}"
        f"<THONGTINDONVI><MACSKCB>{facility}</MACSKCB></THONGTINDONVI><THONGTINHOSO>"
        f"<NGAYLAP>202403041700</NGAYLAP><SOLUONGHOSO>{count}</SOLUONGHOSO><DANHSACHHOSO>"
        f"<HOSO>{files}</HOSO></DANHSACHHOSO></THONGTINHOSO><CHUKYDONVI/></GIAMDINHHS>"
    )


BILLION_LAUGHS = (
    '<!DOCTYPE GIAMDINHHS [<!ENTITY l0 "ha">'
    + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    + "]>"
)
QUADRATIC = '<!DOCTYPE GIAMDINHHS [<!ENTITY a "' + "A" * 50_000 + '">]>'
EXTERNAL_ENTITY = '<!DOCTYPE GIAMDINHHS [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
PARAMETER_ENTITY = '<!DOCTYPE GIAMDINHHS [<!ENTITY % p SYSTEM "http://127.0.0.1:1/evil.dtd">%p;]>'
EXTERNAL_DTD = '<!DOCTYPE GIAMDINHHS SYSTEM "http://127.0.0.1:1/giamdinhhs.dtd">'


def gateway_corpus() -> list[BadFile]:
    """Dossier files a facility (or an attacker) may drop, with the gateway's verdict."""

    def one_episode(**changes: Any) -> tuple[dict[str, Any], str]:
        event = f.exam(**changes)
        return event, _b64(_xml1(event))

    _, xml1 = one_episode()
    good = _envelope([("XML1", xml1)])
    cases = [
        BadFile("empty file", b"", "xml_malformed"),
        BadFile("a byte-order mark only", b"\xef\xbb\xbf", "xml_malformed"),
        BadFile("binary garbage", random.Random(6).randbytes(4096), "xml_malformed"),
        BadFile("truncated in the middle", good.encode()[: len(good) // 2], "xml_malformed"),
        BadFile(
            "NUL byte inside", good.replace("<NGAYLAP>", "<NGAYLAP>\x00").encode(), "xml_malformed"
        ),
        BadFile(
            "control character reference &#1;",
            good.replace("<NGAYLAP>", "<NGAYLAP>&#1;").encode(),
            "xml_malformed",
        ),
        BadFile(
            "declared UTF-8, written in CP1258/latin-1",
            good.replace("<NGAYLAP>", "<NGAYLAP>Ng\xe0y").encode("latin-1"),
            "xml_malformed",
        ),
        BadFile(
            "an encoding Python does not know ('ttf-8')",
            good.replace("encoding='utf-8'", "encoding='ttf-8'").encode(),
            "xml_malformed",
        ),
        BadFile(
            "a multi-byte encoding expat cannot read (Shift-JIS)",
            good.replace("encoding='utf-8'", "encoding='shift_jis'").encode(),
            "xml_malformed",
        ),
        BadFile(
            "a table declared in an unknown encoding",
            _envelope(
                [
                    (
                        "XML1",
                        _b64(_xml1(f.exam()).replace(b"encoding='utf-8'", b"encoding='x-unknown'")),
                    )
                ]
            ).encode(),
            "table_malformed",
        ),
        BadFile(
            "billion laughs",
            _envelope([("XML1", xml1)], prolog=BILLION_LAUGHS)
            .replace("<NGAYLAP>", "<NGAYLAP>&l9;")
            .encode(),
            "xml_forbidden",
        ),
        BadFile(
            "quadratic blowup",
            _envelope([("XML1", xml1)], prolog=QUADRATIC)
            .replace("<NGAYLAP>", "<NGAYLAP>" + "&a;" * 1000)
            .encode(),
            "xml_forbidden",
        ),
        BadFile(
            "external entity (file:///etc/passwd)",
            _envelope([("XML1", xml1)], prolog=EXTERNAL_ENTITY)
            .replace("<NGAYLAP>", "<NGAYLAP>&x;")
            .encode(),
            "xml_forbidden",
        ),
        BadFile(
            "parameter entity fetching a remote DTD",
            _envelope([("XML1", xml1)], prolog=PARAMETER_ENTITY).encode(),
            "xml_forbidden",
        ),
        BadFile(
            "external DTD",
            _envelope([("XML1", xml1)], prolog=EXTERNAL_DTD).encode(),
            "xml_forbidden",
        ),
        BadFile(
            "entity bomb inside a base64 table",
            _envelope(
                [
                    (
                        "XML1",
                        _b64(
                            _xml1(f.exam())
                            .replace(
                                b"?><TONG_HOP>",
                                b"?>"
                                + BILLION_LAUGHS.replace("GIAMDINHHS", "TONG_HOP").encode()
                                + b"<TONG_HOP>",
                            )
                            .replace(b"<HO_TEN>", b"<HO_TEN>&l9;")
                        ),
                    )
                ]
            ).encode(),
            "xml_forbidden",
        ),
        BadFile(
            "base64 that is not base64",
            _envelope([("XML1", "!!not*base64!!")]).encode(),
            "base64_invalid",
        ),
        BadFile(
            "base64 with broken padding",
            _envelope([("XML1", xml1[:-2] + "=")]).encode(),
            "base64_invalid",
        ),
        BadFile(
            "base64 with non-ASCII letters",
            _envelope([("XML1", "PD94bWwg" + "á" * 8)]).encode(),
            "base64_invalid",
        ),
        BadFile(
            "base64 of binary, not XML",
            _envelope([("XML1", _b64(b"\x89PNG\r\n\x1a\n" + bytes(64)))]).encode(),
            "table_malformed",
        ),
        BadFile(
            "base64 of a truncated table",
            _envelope([("XML1", _b64(_xml1(f.exam())[:80]))]).encode(),
            "table_malformed",
        ),
        BadFile(
            "wrong root element",
            good.replace("GIAMDINHHS", "HOSO_KCB").encode(),
            "envelope_invalid",
        ),
        BadFile(
            "SOLUONGHOSO is not a number",
            good.replace("<SOLUONGHOSO>1", "<SOLUONGHOSO>một").encode(),
            "envelope_invalid",
        ),
        BadFile(
            "SOLUONGHOSO disagrees",
            good.replace("<SOLUONGHOSO>1", "<SOLUONGHOSO>2").encode(),
            "count_mismatch",
        ),
        BadFile(
            "an episode without XML1", _envelope([("XML2", _b64(b"<x/>"))]).encode(), "xml1_missing"
        ),
        BadFile(
            "XML1 twice in one episode",
            _envelope([("XML1", xml1), ("XML1", xml1)]).encode(),
            "table_duplicated",
        ),
        BadFile(
            "MA_LK missing",
            _envelope([("XML1", _b64(_xml1(f.exam(ma_lk=None))))]).encode(),
            "ma_lk_missing",
        ),
        BadFile(
            "a facility's episode in another facility's file",
            _envelope([("XML1", _b64(_xml1(f.exam(facility="79002"))))]).encode(),
            "facility_mismatch",
        ),
        BadFile(
            "GIOI_TINH 'nam' (not a number)",
            _envelope([("XML1", _b64(_xml1(f.exam(gioi_tinh="nam"))))]).encode(),
            "number_invalid",
        ),
        BadFile(
            "T_TONGCHI_BV of 10^30 (beyond a long)",
            _envelope([("XML1", _b64(_xml1(f.exam(t_tongchi_bv=10**30))))]).encode(),
            "number_invalid",
        ),
        # hostile but valid: published, the hostile part inert
        BadFile(
            "XInclude of /etc/passwd (not processed)",
            _envelope(
                [("XML1", xml1)],
                inside='<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
                'href="file:///etc/passwd" parse="text"/>',
            ).encode(),
            None,
            1,
        ),
        BadFile(
            "CDATA around the facility code",
            _envelope([("XML1", one_episode()[1])])
            .replace("<MACSKCB>79001", "<MACSKCB><![CDATA[79001]]>")
            .encode(),
            None,
            1,
        ),
        BadFile(
            "markup and SQL in a name (escaped)",
            _envelope(
                [
                    (
                        "XML1",
                        _b64(
                            _xml1(
                                f.exam(
                                    name="<script>alert(1)</script>'); DROP TABLE health_book_entries;--",  # noqa: E501
                                )
                            )
                        ),
                    )
                ]
            ).encode(),
            None,
            1,
        ),
        BadFile(
            "UTF-16 file with a byte-order mark",
            _envelope(
                [("XML1", _b64(_xml1(f.exam(name="Trần Thị Ánh"))))], encoding="utf-16"
            ).encode("utf-16"),
            None,
            1,
        ),
        BadFile(
            "a 5,000-level deep element nest",
            _envelope(
                [("XML1", _b64(_xml1(f.exam())))], inside="<X>" * 5000 + "</X>" * 5000
            ).encode(),
            None,
            1,
        ),
    ]
    return cases
