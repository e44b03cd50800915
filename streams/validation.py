"""Validation of examination events against the QĐ 130/4750 rules the appraisal portal applies.

``validate(event, ...)`` returns ``None`` for a valid event, or the first :class:`Rejection`
found: a stable reason code (``schemas.reasons``, documented in the README) and a message a
facility's IT staff can act on. Messages name fields and codes, never a name or citizen ID.

Text is checked for length only: Vietnamese (any Unicode) passes untouched, and hostile text
(quotes, SQL, control characters) is stored verbatim, safely, by parameterised SQL. The one
character refused is NUL, which PostgreSQL ``text`` cannot store.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.errors import Rejected
from schemas.reference import FacilityRegistry, load_provinces
from schemas.time import parse_datetime

__all__ = ["Rejection", "Validator"]


#: what :meth:`Validator.validate` returns for an invalid event: the one shape of an input
#: refused with a reason (``reason``, ``message``), which the decoder and the dossier parser raise
Rejection = Rejected


# re.ASCII: \d must not match other scripts' digits ("０７９" is not a province code)
_DIGITS = re.compile(r"\d+\Z", re.ASCII)
_FACILITY = re.compile(r"\d{5}\Z", re.ASCII)
_ICD10 = re.compile(r"[A-Z]\d[0-9A-Z](\.?[0-9A-Z]{1,4})?\Z", re.ASCII)
_DOITUONG = re.compile(r"[1-9](\.\d{1,2})?\Z", re.ASCII)
_CARD = re.compile(r"([A-Z]{2})([1-5])(\d{2})(\d{10})\Z", re.ASCII)

#: Beneficiary group letters of the HI card (Decision 1351/QĐ-BHXH and successors).
HI_GROUPS = frozenset(
    "DN HX CH NN TK HC XK CA HT TB NO CT XB TN CS XN MS HD TQ TA TY HG LS PV CC CK CB KC HS "
    "SV GB GD TE BT HN DT DK XD TS TC QN CY NK CN".split()
)
GIOI_TINH = frozenset({1, 2, 3})
MA_LOAI_KCB = frozenset(f"{i:02d}" for i in range(1, 11))
KET_QUA_DTRI = frozenset(range(1, 8))
MA_LOAI_RV = frozenset(range(1, 6))
MA_LYDO_CT = frozenset({1, 2, 3})

#: (field, max length) of XML1 text fields.
_LENGTHS_XML1 = (
    ("ma_lk", 100),
    ("ma_bn", 100),
    ("ho_ten", 255),
    ("ma_benh_chinh", 7),
    ("ma_benh_kt", 100),
    ("ma_doituong_kcb", 4),
    ("ma_khoa", 100),
    ("ngay_tai_kham", 50),
    ("event_id", 100),
    ("matinh_cu_tru", 3),
    ("ma_the_bhyt", 159),
)
_LENGTHS_XML13 = (
    ("so_hoso", 50),
    ("so_chuyentuyen", 50),
    ("giay_chuyen_tuyen", 50),
    ("dau_hieu_ls", 4000),
    ("chan_doan_rv", 4000),
    ("qt_benhly", 4000),
    ("huong_dieu_tri", 4000),
    ("phuongtien_vc", 255),
    ("ma_bac_si", 255),
)
_LENGTHS_XML14 = (("so_giayhen_kl", 50), ("chan_doan_rv", 4000), ("ma_bac_si", 255))
_MONEY = (
    "t_thuoc",
    "t_vtyt",
    "t_tongchi_bv",
    "t_tongchi_bh",
    "t_bntt",
    "t_bncct",
    "t_bhtt",
    "t_nguonkhac",
)
_CLOCK_SKEW = timedelta(minutes=15)

# century digit of the citizen ID -> (first year of the century, sex) ; sex 1 male 2 female
_CCCD_CENTURY = {str(d): (1900 + 100 * (d // 2), 1 + d % 2) for d in range(8)}
_CCCD_CENTURY.update({"8": (2300, 1), "9": (2300, 2)})


#: (field, test, message) of the coded fields, in the order they are checked
_CODE_LISTS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("ma_loai_kcb", MA_LOAI_KCB.__contains__, "MA_LOAI_KCB={!r} not in 01..10"),
    ("ket_qua_dtri", KET_QUA_DTRI.__contains__, "KET_QUA_DTRI={} not in 1..7"),
    ("ma_loai_rv", MA_LOAI_RV.__contains__, "MA_LOAI_RV={} not in 1..5"),
    (
        "ma_doituong_kcb",
        lambda code: _DOITUONG.match(code) is not None,
        "MA_DOITUONG_KCB={!r} is not a category",
    ),
)


@dataclass(slots=True)
class _Event:
    """An event under validation, with what the rules parsed of it so far."""

    fields: Mapping[str, Any]
    now: datetime
    born: datetime | None = None
    discharged: datetime | None = None

    @property
    def latest(self) -> datetime:
        """The latest date an event may carry: now, give or take a clock skew."""
        return self.now + _CLOCK_SKEW


def _has_nul(record: Mapping[str, Any]) -> bool:
    return any(isinstance(v, str) and "\x00" in v for v in record.values())


class Validator:
    """Holds the reference data; ``validate`` is a pure function of the event and ``now``."""

    def __init__(self, registry: FacilityRegistry, provinces: Mapping[str, str] | None = None):
        self.registry = registry
        self.provinces = frozenset(provinces or load_provinces())

    # -- helpers ------------------------------------------------------------------------
    def _facility_code_ok(self, code: str | None) -> bool:
        return (
            code is not None
            and _FACILITY.match(code) is not None
            and (code[:2] in self.provinces or code[:2] in ("97", "98"))
        )

    def _card_ok(self, cards: str) -> bool:
        for card in cards.split(";"):
            m = _CARD.match(card.strip())
            if m is None or m.group(1) not in HI_GROUPS or m.group(3) not in self.provinces:
                return False
        return True

    # -- the rules ----------------------------------------------------------------------
    def validate(self, event: Mapping[str, Any], now: datetime) -> Rejection | None:
        checked = _Event(event, now)
        for rule in _RULES:
            rejection = rule(self, checked)
            if rejection is not None:
                return rejection
        return None

    def validate_withdrawal(self, withdrawal: Mapping[str, Any]) -> Rejection | None:
        """A withdrawal names an episode of a known facility and its patient's citizen ID."""
        if _has_nul(withdrawal):
            return Rejection("text_nul_character", "the withdrawal contains NUL")
        for name, limit in (("event_id", 100), ("ma_lk", 100), ("ly_do", 500)):
            if len(withdrawal[name]) > limit:
                return Rejection(
                    "text_too_long",
                    f"{name.upper()} is {len(withdrawal[name])} characters, max {limit}",
                )
        for name in ("event_id", "ma_lk"):
            if not withdrawal[name].strip():
                return Rejection("required_field_missing", f"{name.upper()} is empty")
        checked = _Event(withdrawal, datetime.min)
        return self._citizen_id(checked) or self._facility_known(withdrawal["ma_cskcb"])

    def _facility_known(self, code: str) -> Rejection | None:
        if not self._facility_code_ok(code):
            return Rejection(
                "facility_code_invalid",
                f"MA_CSKCB={code!r} is not a 5-digit facility code of a real province",
            )
        if code not in self.registry:
            return Rejection("facility_unknown", f"MA_CSKCB={code} is not in the facility registry")
        return None

    def _text(self, e: _Event) -> Rejection | None:
        """NUL characters, lengths, required fields."""
        event = e.fields
        for name, value in event.items():
            if isinstance(value, str) and "\x00" in value:
                return Rejection("text_nul_character", f"{name.upper()} contains NUL")
        for name, limit in _LENGTHS_XML1:
            value = event.get(name)
            if value is not None and len(value) > limit:
                return Rejection(
                    "text_too_long", f"{name.upper()} is {len(value)} characters, max {limit}"
                )
        for name in ("event_id", "ma_lk", "ma_bn", "ho_ten"):
            if not (event.get(name) or "").strip():
                return Rejection("required_field_missing", f"{name.upper()} is empty")
        return None

    def _citizen_id(self, e: _Event) -> Rejection | None:
        cccd = e.fields["so_cccd"]
        if len(cccd) != 12 or _DIGITS.match(cccd) is None:
            return Rejection(
                "citizen_id_format", f"SO_CCCD has {len(cccd)} characters, expected 12 digits"
            )
        if cccd[0] != "0" or cccd[1:3] not in self.provinces:
            return Rejection(
                "citizen_id_province", f"SO_CCCD province part {cccd[:3]} is not a province code"
            )
        return None

    def _sex_and_birth(self, e: _Event) -> Rejection | None:
        """GIOI_TINH and NGAY_SINH, and the citizen ID's sex/century and year digits."""
        event = e.fields
        cccd = event["so_cccd"]
        gioi_tinh = event["gioi_tinh"]
        if gioi_tinh not in GIOI_TINH:
            return Rejection("code_not_in_list", f"GIOI_TINH={gioi_tinh} not in 1, 2, 3")
        try:
            e.born = born = parse_datetime(event["ngay_sinh"])
        except ValueError:
            return Rejection("date_invalid", "NGAY_SINH is not a valid yyyymmddHHMM date")
        century, sex = _CCCD_CENTURY[cccd[3]]
        if gioi_tinh != 3 and sex != gioi_tinh:
            return Rejection(
                "citizen_id_sex_century",
                f"SO_CCCD sex digit {cccd[3]} disagrees with GIOI_TINH={gioi_tinh}",
            )
        if century + int(cccd[4:6]) != born.year:
            return Rejection(
                "citizen_id_sex_century",
                "SO_CCCD century/year digits disagree with NGAY_SINH's year",
            )
        return None

    def _hi_card(self, e: _Event) -> Rejection | None:
        if not self._card_ok(e.fields["ma_the_bhyt"]):
            return Rejection(
                "hi_card_format",
                "MA_THE_BHYT does not have the 15-character "
                "structure (group letters, level 1-5, province, 10 digits)",
            )
        return None

    def _facilities(self, e: _Event) -> Rejection | None:
        event = e.fields
        for name in ("ma_cskcb", "ma_dkbd", "ma_noi_di", "ma_noi_den"):
            code = event.get(name)
            if (code is not None or name in ("ma_cskcb", "ma_dkbd")) and not (
                self._facility_code_ok(code)
            ):
                return Rejection(
                    "facility_code_invalid",
                    f"{name.upper()}={code!r} is not a 5-digit facility code of a real province",
                )
        if event["ma_cskcb"] not in self.registry:
            return Rejection(
                "facility_unknown", f"MA_CSKCB={event['ma_cskcb']} is not in the facility registry"
            )
        return None

    def _diagnoses(self, e: _Event) -> Rejection | None:
        event = e.fields
        if _ICD10.match(event["ma_benh_chinh"]) is None:
            return Rejection(
                "icd10_main_invalid",
                f"MA_BENH_CHINH={event['ma_benh_chinh']!r} is not one ICD-10 code",
            )
        secondary = event.get("ma_benh_kt")
        if secondary:
            codes = secondary.split(";")
            if len(codes) > 12:
                return Rejection(
                    "icd10_secondary_invalid", f"MA_BENH_KT has {len(codes)} codes, max 12"
                )
            for code in codes:
                if _ICD10.match(code) is None:
                    return Rejection(
                        "icd10_secondary_invalid", f"MA_BENH_KT code {code!r} is not an ICD-10 code"
                    )
        return None

    def _code_lists(self, e: _Event) -> Rejection | None:
        for name, allowed, message in _CODE_LISTS:
            value = e.fields[name]
            if not allowed(value):
                return Rejection("code_not_in_list", message.format(value))
        return None

    def _dates(self, e: _Event) -> Rejection | None:
        """NGAY_VAO, NGAY_RA and the card's validity dates: valid, in order, not ahead of now
        (give or take a clock skew)."""
        event = e.fields
        try:
            admitted = parse_datetime(event["ngay_vao"])
            e.discharged = discharged = parse_datetime(event["ngay_ra"])
            for name in ("gt_the_tu", "gt_the_den"):
                if event.get(name):
                    parse_datetime(event[name])
        except ValueError:
            return Rejection("date_invalid", "NGAY_VAO, NGAY_RA or GT_THE_* is not a valid date")
        if not e.born <= admitted <= discharged:  # type: ignore[operator]
            return Rejection("date_order", "expected NGAY_SINH <= NGAY_VAO <= NGAY_RA")
        if discharged > e.latest:
            return Rejection("date_in_future", "NGAY_RA lies in the future")
        return None

    def _money(self, e: _Event) -> Rejection | None:
        event = e.fields
        for name in _MONEY:
            if event.get(name, 0) < 0:
                return Rejection("money_negative", f"{name.upper()} is negative")
        total = event["t_tongchi_bv"]
        if event["t_tongchi_bh"] > total or event.get("t_bhtt", 0) > total:
            return Rejection(
                "money_insurer_exceeds_total", "T_TONGCHI_BH or T_BHTT exceeds T_TONGCHI_BV"
            )
        return None

    def _referral(self, e: _Event) -> Rejection | None:
        referral = e.fields.get("referral")
        return None if referral is None else self._validate_referral(referral, e.latest)

    def _appointment(self, e: _Event) -> Rejection | None:
        appointment = e.fields.get("appointment")
        if appointment is None:
            return None
        return self._validate_appointment(appointment, e.discharged)  # type: ignore[arg-type]

    def _validate_referral(self, referral: Mapping[str, Any], latest: datetime) -> Rejection | None:
        if _has_nul(referral):
            return Rejection("text_nul_character", "an XML13 field contains NUL")
        for name, limit in _LENGTHS_XML13:
            value = referral.get(name)
            if value is not None and len(value) > limit:
                return Rejection(
                    "text_too_long", f"XML13 {name.upper()} is {len(value)} characters, max {limit}"
                )
        for name in ("so_chuyentuyen", "dau_hieu_ls", "qt_benhly", "huong_dieu_tri"):
            if not (referral.get(name) or "").strip():
                return Rejection("required_field_missing", f"XML13 {name.upper()} is empty")
        for name in ("ma_noi_di", "ma_noi_den"):
            if not self._facility_code_ok(referral[name]):
                return Rejection(
                    "facility_code_invalid",
                    f"XML13 {name.upper()}={referral[name]!r} is not a 5-digit "
                    "facility code of a real province",
                )
        if referral["ma_noi_den"] == referral["ma_noi_di"]:
            return Rejection(
                "referral_same_facility",
                f"XML13 MA_NOI_DEN equals MA_NOI_DI ({referral['ma_noi_di']})",
            )
        if referral["ma_lydo_ct"] not in MA_LYDO_CT:
            return Rejection(
                "code_not_in_list", f"XML13 MA_LYDO_CT={referral['ma_lydo_ct']} not in 1, 2, 3"
            )
        try:
            issued = parse_datetime(referral["ngay_ct"])
        except ValueError:
            return Rejection("date_invalid", "XML13 NGAY_CT is not a valid date")
        if issued > latest:
            return Rejection("date_in_future", "XML13 NGAY_CT lies in the future")
        return None

    def _validate_appointment(
        self, appointment: Mapping[str, Any], discharged: datetime
    ) -> Rejection | None:
        if _has_nul(appointment):
            return Rejection("text_nul_character", "an XML14 field contains NUL")
        for name, limit in _LENGTHS_XML14:
            value = appointment.get(name)
            if value is not None and len(value) > limit:
                return Rejection(
                    "text_too_long", f"XML14 {name.upper()} is {len(value)} characters, max {limit}"
                )
        if not (appointment.get("so_giayhen_kl") or "").strip():
            return Rejection("required_field_missing", "XML14 SO_GIAYHEN_KL is empty")
        try:
            when = parse_datetime(appointment["ngay_hen_kl"])
            if appointment.get("ngay_ct"):
                parse_datetime(appointment["ngay_ct"])
        except ValueError:
            return Rejection("date_invalid", "XML14 NGAY_HEN_KL or NGAY_CT is not a valid date")
        if when <= discharged:
            return Rejection(
                "appointment_before_discharge", "XML14 NGAY_HEN_KL is not after NGAY_RA"
            )
        return None


#: the rules of an event, in order: the first one that fails gives the rejection (a later rule
#: may use what an earlier one parsed: NGAY_SINH, NGAY_RA)
_RULES: tuple[Callable[[Validator, _Event], Rejection | None], ...] = (
    Validator._text,
    Validator._citizen_id,
    Validator._sex_and_birth,
    Validator._hi_card,
    Validator._facilities,
    Validator._diagnoses,
    Validator._code_lists,
    Validator._dates,
    Validator._money,
    Validator._referral,
    Validator._appointment,
)
