"""The reason codes of every stage, in one table: why an input was refused, and what the
facility (or the operator) should fix.

* ``gateway``: the XML dossier gateway refuses a file (``producers.gateway``; the file is moved
  aside with a ``.reason.txt``);
* ``decode``: a Kafka message is not a message of ours (the worker's intake, ``schemas.codec``);
* ``validate``: an examination event breaks a rule of QĐ 130/4750 (``streams.validation``);
* ``sink``: PostgreSQL refuses a record, or a daily report is malformed (``sinks``).

The last three end in a dead letter whose ``stage`` is the code's stage. Codes are stable
identifiers: never renamed, never reused (a code belongs to one stage). The tables of
docs/reference.md and docs/gateway.md are generated from here (``make docs``).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "GATEWAY_REASONS",
    "REASONS",
    "REASON_CODES",
    "STAGES",
    "Reason",
    "gateway_reasons_markdown",
    "reason_stage",
    "reasons_markdown",
]

STAGES = ("gateway", "decode", "validate", "sink")


class Reason(NamedTuple):
    stage: str
    meaning: str
    fix: str


_GATEWAY: dict[str, tuple[str, str]] = {
    "file_unreadable": (
        "The file could not be read (permissions, I/O error, removed).",
        "Operator: check the drop directory's permissions and disk.",
    ),
    "file_too_large": (
        "The file exceeds the gateway's size limit.",
        "Split the day's upload into several files.",
    ),
    "xml_malformed": (
        "The envelope is not well-formed XML.",
        "Export the file again; check the HIS export for truncation/encoding.",
    ),
    "xml_forbidden": (
        "The XML declares a DTD or entities (XML bombs, external entities are refused).",
        "Export plain XML without a DOCTYPE.",
    ),
    "envelope_invalid": (
        "The GIAMDINHHS envelope is incomplete: wrong root, MACSKCB or "
        "SOLUONGHOSO missing, or a FILEHOSO without LOAIHOSO/NOIDUNGFILE.",
        "Export the envelope of QĐ 130/4750 in full.",
    ),
    "count_mismatch": (
        "SOLUONGHOSO differs from the number of HOSO in the file.",
        "Export the file again; it may be truncated.",
    ),
    "base64_invalid": (
        "A NOIDUNGFILE is not valid base64.",
        "Encode each table with standard base64.",
    ),
    "base64_too_large": (
        "A NOIDUNGFILE exceeds the gateway's size limit for one table.",
        "Split the upload into several files.",
    ),
    "table_malformed": (
        "A decoded table is not well-formed XML or has the wrong root element "
        "for its LOAIHOSO (TONG_HOP, CHI_TIEU_GIAYCHUYENTUYEN, "
        "CHI_TIEU_GIAYHEN_KHAMLAI).",
        "Export the tables of QĐ 130/4750.",
    ),
    "xml1_missing": (
        "A HOSO has no XML1 (TONG_HOP) table.",
        "Every episode needs its XML1 summary.",
    ),
    "table_duplicated": (
        "A HOSO has the same table (XML1, XML13 or XML14) twice.",
        "Send each table once per episode.",
    ),
    "ma_lk_missing": (
        "A table has no MA_LK, so it cannot be joined to its episode.",
        "Fill MA_LK in every table.",
    ),
    "tables_do_not_join": (
        "An XML13/XML14 table's MA_LK differs from its HOSO's XML1 MA_LK.",
        "Put the tables of one episode, with the same MA_LK, in one HOSO.",
    ),
    "episode_duplicated": (
        "Two HOSO of the file have the same MA_LK.",
        "Send each episode once per file.",
    ),
    "facility_mismatch": (
        "A table's MA_CSKCB differs from the envelope's MACSKCB.",
        "Send each facility's episodes in its own file.",
    ),
    "number_invalid": (
        "A numeric field (code, count, VND amount, weight) is missing or not "
        "a number; codes, counts and amounts must be whole numbers.",
        "Send numbers, e.g. GIOI_TINH 1, T_TONGCHI_BV 250000, CAN_NANG 62.5.",
    ),
    "dossier_too_large": (
        "The file's episodes do not fit in one Kafka message (the gateway "
        "publishes a file whole or not at all).",
        "Split the upload into several files of fewer episodes.",
    ),
}

_DECODE: dict[str, tuple[str, str]] = {
    "empty_message": ("The Kafka message has no value.", "Send the event body."),
    "bad_magic_byte": (
        "The value is not in the Confluent wire format (first byte not 0).",
        "Encode with the Avro serializer (magic byte 0 + schema id).",
    ),
    "truncated_header": (
        "The value is shorter than the 5-byte wire-format header.",
        "Send the full serialized value.",
    ),
    "unknown_schema_id": (
        "The schema id is neither in the catalog nor in the registry.",
        "Use a released schema id from schemas/catalog.json or the registry.",
    ),
    "unexpected_schema": (
        "A known schema, but not one this topic carries.",
        "Publish ExaminationEvent or ExaminationBatch to this topic.",
    ),
    "malformed_avro": (
        "The Avro body does not decode with the writer's schema.",
        "Serialize the record with the schema whose id is in the header.",
    ),
    "trailing_bytes": (
        "Bytes are left after the Avro record (over-long body).",
        "Send exactly one serialized record per message.",
    ),
    "empty_batch": ("A batch message contains no event.", "Send at least one event per batch."),
}

_VALIDATE: dict[str, tuple[str, str]] = {
    "batch_facility_mismatch": (
        "An event's MA_CSKCB differs from its batch's facility.",
        "Send each facility's events in its own batches.",
    ),
    # identity
    "citizen_id_format": ("SO_CCCD is not 12 digits.", "Send the 12-digit citizen ID."),
    "citizen_id_province": (
        "SO_CCCD's first 3 digits are not a real province code.",
        "Check the citizen ID against the patient's card.",
    ),
    "citizen_id_sex_century": (
        "SO_CCCD's 4th digit (sex and century) or 5th-6th digits (year of birth) disagree "
        "with GIOI_TINH or NGAY_SINH.",
        "Check GIOI_TINH, NGAY_SINH and the citizen ID.",
    ),
    "hi_card_format": (
        "MA_THE_BHYT is not 15 characters: known beneficiary group letters, benefit level 1-5, "
        "a real province code, 10 digits.",
        "Send the HI card number as printed (several separated by ';').",
    ),
    # facilities
    "facility_code_invalid": (
        "MA_CSKCB, MA_DKBD, MA_NOI_DI or MA_NOI_DEN is not a 5-digit facility code of a real "
        "province.",
        "Use the facility codes issued by Vietnam Social Security.",
    ),
    "facility_unknown": (
        "MA_CSKCB is not in the facility registry of Ho Chi Minh City.",
        "Register the facility, or correct MA_CSKCB.",
    ),
    # clinical codes
    "icd10_main_invalid": (
        "MA_BENH_CHINH is not exactly one well-formed ICD-10 code.",
        "Send one ICD-10 code (e.g. J06.9) as the main diagnosis.",
    ),
    "icd10_secondary_invalid": (
        "MA_BENH_KT has a malformed ICD-10 code or more than 12 codes.",
        "Send at most 12 ICD-10 codes separated by ';'.",
    ),
    "code_not_in_list": (
        "GIOI_TINH, MA_LOAI_KCB, KET_QUA_DTRI, MA_LOAI_RV, MA_DOITUONG_KCB or MA_LYDO_CT is "
        "not in its code list.",
        "Use the code lists of QĐ 130/4750.",
    ),
    # dates
    "date_invalid": (
        "A date is not a valid yyyymmddHHMM (or yyyymmdd) value.",
        "Send dates as yyyymmddHHMM, e.g. 202401151030.",
    ),
    "date_order": (
        "Dates are out of order: birth <= admission <= discharge is required.",
        "Check NGAY_SINH, NGAY_VAO and NGAY_RA.",
    ),
    "date_in_future": (
        "A date lies in the future (beyond a 15-minute clock skew).",
        "Check the HIS clock and the dates.",
    ),
    "appointment_before_discharge": (
        "NGAY_HEN_KL is not after NGAY_RA.",
        "The follow-up date must follow the discharge.",
    ),
    # referral / appointment
    "referral_same_facility": (
        "The referral's destination is its origin.",
        "MA_NOI_DEN must differ from MA_NOI_DI.",
    ),
    # money
    "money_negative": ("A money field is negative.", "Money fields are VND amounts >= 0."),
    "money_insurer_exceeds_total": (
        "T_TONGCHI_BH or T_BHTT exceeds the facility's total T_TONGCHI_BV.",
        "The insurer's amounts cannot exceed the episode's total cost.",
    ),
    # text
    "required_field_missing": (
        "A required field is empty.",
        "Fill MA_LK, MA_BN, HO_TEN and the required XML13/XML14 fields.",
    ),
    "text_too_long": (
        "A text field exceeds the standard's maximum length.",
        "Shorten the field to the length of QĐ 130/4750.",
    ),
    "text_nul_character": (
        "A text field contains the NUL character (0x00).",
        "Remove NUL characters; any other Unicode is accepted.",
    ),
}

_SINK: dict[str, tuple[str, str]] = {
    "db_rejected": (
        "PostgreSQL refused the record (a table constraint).",
        "Operator: inspect the dead letter; the record breaks a database rule.",
    ),
    "report_invalid": (
        "A daily facility report has a malformed MA_CSKCB, a negative episode "
        "count or an implausible date.",
        "Send one report per facility and day: the 5-digit MA_CSKCB, the day, "
        "the number of episodes sent (0 on a day without data).",
    ),
}

_TABLES = (("gateway", _GATEWAY), ("decode", _DECODE), ("validate", _VALIDATE), ("sink", _SINK))

#: reason code -> Reason(stage, what it means, what the facility should fix), every stage
REASON_CODES: dict[str, Reason] = {
    code: Reason(stage, meaning, fix)
    for stage, table in _TABLES
    for code, (meaning, fix) in table.items()
}
if len(REASON_CODES) != sum(len(table) for _, table in _TABLES):
    raise AssertionError("a reason code is used by two stages")

#: the codes a dead letter carries (decode, validate, sink): code -> (meaning, fix)
REASONS: dict[str, tuple[str, str]] = {
    code: (r.meaning, r.fix) for code, r in REASON_CODES.items() if r.stage != "gateway"
}
#: the codes the dossier gateway gives a refused file: code -> (meaning, fix)
GATEWAY_REASONS: dict[str, tuple[str, str]] = {
    code: (r.meaning, r.fix) for code, r in REASON_CODES.items() if r.stage == "gateway"
}


def reason_stage(code: str) -> str:
    """The stage of a reason code (a dead letter's ``stage``): gateway, decode, validate or
    sink; KeyError for an unknown code."""
    return REASON_CODES[code].stage


def reasons_markdown() -> str:
    """docs/reference.md's reason-code table (``ehb reasons --markdown``, ``make docs``)."""
    lines = ["| code | stage | what it means | what the facility should fix |", "|---|---|---|---|"]
    for code, (meaning, fix) in REASONS.items():
        cells = [f"`{code}`", reason_stage(code), meaning, fix]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def gateway_reasons_markdown() -> str:
    """docs/gateway.md's table of the gateway's reason codes (``make docs``)."""
    rows = ["| reason | meaning | what the facility should fix |", "|---|---|---|"]
    rows += [
        f"| `{code}` | {meaning} | {fix} |" for code, (meaning, fix) in GATEWAY_REASONS.items()
    ]
    return "\n".join(rows) + "\n"
