"""A synthetic Ho Chi Minh City: facilities and patients producing examination events.

Reproducible from a seed. The mix follows the campaign's figures (DOMAIN.md): about 22% of
exams out of province (HI registration in another province), referral letters on ~0.6% and
follow-up appointments on ~7% of exams, plus a configurable share of invalid events, each
broken in one known way. Referred patients mostly arrive at the destination within days and
most appointments are kept, so the stateful stage has something to complete, keep, expire and
miss. Event times span ``days`` of simulated time from ``start`` (not the wall clock), so a
year replays in minutes.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from schemas.reference import Facility, FacilityRegistry, load_provinces
from schemas.time import VN_TZ

__all__ = ["CitySimulator", "SimulationConfig", "INVALID_KINDS"]

CITY_EXAMS_PER_YEAR = 3_789_912
_NAMESPACE = uuid.UUID("6f1d3c1e-3b7a-4c8e-9a51-0e4b7d9c2a79")

FAMILY = (
    "Nguyễn Trần Lê Phạm Hoàng Huỳnh Phan Vũ Võ Đặng Bùi Đỗ Hồ Ngô Dương Lý Trương "
    "Đinh Lâm Mai Tô Châu"
).split()
MIDDLE_M = "Văn Hữu Đức Minh Quốc Gia Thanh Công Tấn Hoàng".split()
MIDDLE_F = "Thị Ngọc Thanh Minh Thu Bảo Kim Mỹ Phương Hồng".split()
GIVEN_M = (
    "An Bình Dũng Hải Hiếu Hùng Khánh Long Nam Phúc Quân Quang Sơn Thành Trung Tuấn "
    "Việt Vinh Khoa Đạt"
).split()
GIVEN_F = (
    "Anh Châu Giang Hà Hạnh Hương Lan Linh Mai Nga Ngân Nhung Phương Tâm Thảo Trang Tú Vy Yến Ánh"
).split()
ICD10 = (
    "J06.9 I10 E11.9 K29.7 J20.9 M54.5 A09 N39.0 J45.9 K21.9 E78.5 I25.1 J18.9 R51 "
    "B34.9 L30.9 H10.9 Z00.0 K52.9 M17.9 I48.9 N18.9 C34.9 O80 S62.5"
).split()
CARD_GROUPS = (
    ("GD", 30),
    ("HN", 10),
    ("DN", 20),
    ("TE", 12),
    ("HS", 6),
    ("SV", 3),
    ("HT", 8),
    ("CN", 4),
    ("BT", 3),
    ("KC", 2),
    ("CB", 2),
)
VISIT_TYPES = (("01", 82), ("02", 4), ("03", 8), ("04", 1), ("05", 2), ("08", 2), ("09", 1))
LEVEL_WEIGHT = {"central": 30, "provincial": 14, "district": 6, "private": 5, "commune": 1}
OTHER_PROVINCES = (
    "74",
    "75",
    "80",
    "72",
    "77",
    "70",
    "82",
    "83",
    "86",
    "87",
    "89",
    "92",
    "01",
    "48",
    "56",
    "66",
    "68",
    "60",
    "94",
    "96",
)
TEXT_SIGNS = (
    "Sốt cao, ho khan, đau ngực",
    "Đau bụng thượng vị, buồn nôn",
    "Khó thở khi gắng sức, phù chân",
    "Đau đầu, chóng mặt, huyết áp cao",
)
TEXT_COURSE = (
    "Điều trị nội khoa 3 ngày không đáp ứng",
    "Diễn tiến nặng dần, cần can thiệp chuyên sâu",
    "Bệnh mạn tính, cần theo dõi tại tuyến trên",
)
TEXT_PLAN = (
    "Chuyển tuyến trên điều trị tiếp",
    "Đề nghị chụp CT và hội chẩn chuyên khoa",
    "Tiếp tục điều trị theo phác đồ",
)

#: invalid kind -> the reason code the worker must give it
INVALID_KINDS: dict[str, str] = {
    "citizen_id_short": "citizen_id_format",
    "citizen_id_province": "citizen_id_province",
    "citizen_id_sex": "citizen_id_sex_century",
    "hi_card": "hi_card_format",
    "facility_unknown": "facility_unknown",
    "icd10": "icd10_main_invalid",
    "discharge_before_admission": "date_order",
    "negative_money": "money_negative",
    "insurer_exceeds_total": "money_insurer_exceeds_total",
    "visit_type": "code_not_in_list",
}


@dataclass
class SimulationConfig:
    events: int = 20_000
    seed: int = 79
    invalid_share: float = 0.01
    out_of_province_share: float = 0.22
    referral_share: float = 0.006
    appointment_share: float = 0.07
    referral_arrival_share: float = 0.8
    appointment_kept_share: float = 0.75
    start: datetime = field(default_factory=lambda: datetime(2024, 1, 11, 7, 0, tzinfo=VN_TZ))
    #: simulated days the events span; default: the city's real pace (3,789,912 a year)
    days: float | None = None
    #: distinct citizens; default: the campaign's ratio of 3.39 exams per integrated resident
    citizens: int | None = None
    #: facilities send a daily report per simulated day (producers/reports.py)
    reports: bool = True
    #: facilities that never send their daily report
    silent_facilities: int = 0
    #: facilities whose daily report misstates the number of episodes sent
    inconsistent_facilities: int = 0


@dataclass(slots=True)
class Patient:
    cccd: str
    name: str
    sex: int
    born: datetime
    card: str
    dkbd: str


@dataclass(order=True)
class _FollowUp:
    at: datetime
    seq: int
    patient: int = field(compare=False)
    facility: str = field(compare=False)
    referred_from: str | None = field(compare=False, default=None)


def _fmt(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M")


class CitySimulator:
    """``events()`` yields exactly ``config.events`` events in (roughly) event-time order."""

    def __init__(self, config: SimulationConfig, registry: FacilityRegistry | None = None):
        self.config = config
        self.registry = registry or FacilityRegistry.from_reference()
        self.rng = random.Random(config.seed)  # noqa: S311 - simulation, not cryptography
        self.facilities: list[Facility] = [
            f for f in (self.registry.get(c) for c in self.registry.codes()) if f is not None
        ]
        self._weights = [LEVEL_WEIGHT.get(f.level, 1) for f in self.facilities]
        self._hcmc_dkbd = [f.code for f in self.facilities if f.level in ("district", "commune")]
        self._upper = [f.code for f in self.facilities if f.level in ("central", "provincial")]
        self.provinces = sorted(p for p in load_provinces() if p not in ("79",))
        self.citizens = config.citizens or max(1, round(config.events / 3.39))
        self.days = config.days if config.days else config.events * 365 / CITY_EXAMS_PER_YEAR
        self._patients: dict[int, Patient] = {}
        self._seq: Counter[str] = Counter()
        self.expected_invalid: Counter[str] = Counter()
        self.published_valid = 0
        #: no event yielded from now on has NGAY_VAO (nor NGAY_RA) before this instant
        self.horizon: datetime = config.start

    # -- population ---------------------------------------------------------------------
    def patient(self, index: int) -> Patient:
        patient = self._patients.get(index)
        if patient is None:
            patient = self._patients[index] = self._make_patient(index)
        return patient

    def _make_patient(self, index: int) -> Patient:
        rng = random.Random(self.config.seed * 1_000_003 + index)  # noqa: S311
        sex = rng.choice((1, 2))
        year = rng.randint(1935, 2023)
        born = datetime(year, rng.randint(1, 12), rng.randint(1, 28), tzinfo=VN_TZ)
        out_of_province = rng.random() < self.config.out_of_province_share
        reg_province = rng.choice(OTHER_PROVINCES) if out_of_province else "79"
        birth_province = reg_province if rng.random() < 0.8 else rng.choice(self.provinces)
        century_digit = (year // 100 - 19) * 2 + (sex - 1)
        cccd = f"0{birth_province}{century_digit}{year % 100:02d}{index % 1_000_000:06d}"
        given = rng.choice(GIVEN_M if sex == 1 else GIVEN_F)
        middle = rng.choice(MIDDLE_M if sex == 1 else MIDDLE_F)
        name = f"{rng.choice(FAMILY)} {middle} {given}"
        groups, weights = zip(*CARD_GROUPS, strict=True)
        group = "TE" if year >= 2018 else rng.choices(groups, weights)[0]
        card = f"{group}{rng.randint(1, 5)}{reg_province}{rng.randint(0, 9_999_999_999):010d}"
        dkbd = (
            rng.choice(self._hcmc_dkbd)
            if reg_province == "79"
            else f"{reg_province}{rng.randint(1, 120):03d}"
        )
        return Patient(cccd, name, sex, born, card, dkbd)

    # -- events -------------------------------------------------------------------------
    def events(self) -> Iterator[dict[str, Any]]:
        cfg = self.config
        rng = self.rng
        span = timedelta(days=self.days)
        follow_ups: list[_FollowUp] = []
        seq = 0
        for i in range(cfg.events):
            now = cfg.start + span * (i / max(1, cfg.events))
            if follow_ups and follow_ups[0].at <= now:
                due = heapq.heappop(follow_ups)
                event = self._exam(due.patient, due.facility, due.at, due.referred_from)
            else:
                facility = rng.choices(self.facilities, self._weights)[0].code
                admitted = now + timedelta(minutes=rng.randint(0, 30))
                event = self._exam(rng.randrange(self.citizens), facility, admitted, None)
            if rng.random() < cfg.invalid_share:
                kind = rng.choice(sorted(INVALID_KINDS))
                self._break(event, kind)
                self.expected_invalid[INVALID_KINDS[kind]] += 1
            else:
                self.published_valid += 1
                patient_index = event.pop("_patient")
                seq = self._plan_follow_ups(event, patient_index, follow_ups, seq)
            event.pop("_patient", None)
            # every later event is admitted (so discharged) at or after this instant
            self.horizon = min(now, follow_ups[0].at) if follow_ups else now
            yield event

    def _plan_follow_ups(
        self, event: dict[str, Any], patient: int, follow_ups: list[_FollowUp], seq: int
    ) -> int:
        rng = self.rng
        cfg = self.config
        discharged = datetime.strptime(event["ngay_ra"], "%Y%m%d%H%M").replace(tzinfo=VN_TZ)
        referral = event.get("referral")
        if referral and rng.random() < cfg.referral_arrival_share:
            at = discharged + timedelta(hours=rng.randint(2, 24 * 10))
            seq += 1
            heapq.heappush(
                follow_ups,
                _FollowUp(at, seq, patient, referral["ma_noi_den"], referral["ma_noi_di"]),
            )
        appointment = event.get("appointment")
        if appointment and rng.random() < cfg.appointment_kept_share:
            planned = datetime.strptime(appointment["ngay_hen_kl"], "%Y%m%d%H%M")
            at = planned.replace(tzinfo=VN_TZ) + timedelta(hours=rng.randint(-20, 30))
            at = max(at, discharged + timedelta(hours=1))
            seq += 1
            heapq.heappush(follow_ups, _FollowUp(at, seq, patient, event["ma_cskcb"]))
        return seq

    def _exam(
        self, patient_index: int, facility: str, admitted: datetime, referred_from: str | None
    ) -> dict[str, Any]:
        rng = self.rng
        cfg = self.config
        p = self.patient(patient_index)
        visit_type = rng.choices(*zip(*VISIT_TYPES, strict=True))[0]
        inpatient = visit_type in ("03", "04")
        stay = (
            timedelta(days=rng.randint(1, 9))
            if inpatient
            else timedelta(minutes=rng.randint(15, 240))
        )
        discharged = admitted + stay
        self._seq[facility] += 1
        ma_lk = f"{facility}{admitted:%y%m%d}{self._seq[facility]:07d}"
        total = rng.randint(50, 5000) * 1000
        insured = total * rng.choice((80, 90, 100)) // 100
        paid_by_insurer = insured * rng.choice((80, 95, 100)) // 100
        icd = rng.choice(ICD10)
        event: dict[str, Any] = {
            "event_id": str(uuid.uuid5(_NAMESPACE, f"{facility}:{ma_lk}")),
            "ma_lk": ma_lk,
            "ma_bn": f"BN{patient_index:08d}",
            "ho_ten": p.name,
            "so_cccd": p.cccd,
            "ngay_sinh": _fmt(p.born),
            "gioi_tinh": p.sex,
            "matinh_cu_tru": p.dkbd[:2],
            "ma_the_bhyt": p.card,
            "ma_dkbd": p.dkbd,
            "gt_the_tu": f"{admitted.year}0101",
            "gt_the_den": f"{admitted.year}1231",
            "ma_benh_chinh": icd,
            "ma_benh_kt": ";".join(rng.sample(ICD10, rng.randint(0, 2))) or None,
            "ma_doituong_kcb": "1.3" if referred_from else "1.1",
            "ma_noi_di": referred_from,
            "ma_noi_den": None,
            "ngay_vao": _fmt(admitted),
            "ngay_ra": _fmt(discharged),
            "so_ngay_dtri": max(1, stay.days),
            "ket_qua_dtri": rng.choice((1, 1, 2, 2, 3)),
            "ma_loai_rv": 1,
            "ma_loai_kcb": visit_type,
            "ma_khoa": "K01",
            "ma_cskcb": facility,
            "ngay_tai_kham": None,
            "t_thuoc": total // 3,
            "t_vtyt": total // 10,
            "t_tongchi_bv": total,
            "t_tongchi_bh": insured,
            "t_bntt": total - insured,
            "t_bncct": insured - paid_by_insurer,
            "t_bhtt": paid_by_insurer,
            "t_nguonkhac": 0,
            "nam_qt": discharged.year,
            "thang_qt": discharged.month,
            "referral": None,
            "appointment": None,
            "_patient": patient_index,
        }
        roll = rng.random()
        if roll < cfg.referral_share and not referred_from:
            self._add_referral(event, facility, icd, discharged)
        elif roll < cfg.referral_share + cfg.appointment_share:
            self._add_appointment(event, facility, icd, discharged)
        return event

    def _add_referral(
        self, event: dict[str, Any], facility: str, icd: str, discharged: datetime
    ) -> None:
        """A referral letter (XML13) to an upper-level facility."""
        rng = self.rng
        destination = rng.choice([c for c in self._upper if c != facility])
        number = event["ma_lk"][len(facility) :]  # date and sequence: unique per facility
        event["ma_loai_rv"] = 2
        event["ma_noi_den"] = destination
        event["referral"] = {
            "so_hoso": event["ma_lk"],
            "so_chuyentuyen": f"CT{number}",
            "giay_chuyen_tuyen": f"GCT{number}",
            "ma_noi_di": facility,
            "ma_noi_den": destination,
            "dau_hieu_ls": rng.choice(TEXT_SIGNS),
            "chan_doan_rv": icd,
            "qt_benhly": rng.choice(TEXT_COURSE),
            "huong_dieu_tri": rng.choice(TEXT_PLAN),
            "phuongtien_vc": "Xe cứu thương",
            "ma_lydo_ct": rng.choice((1, 2, 2, 3)),
            "ma_bac_si": f"BS{rng.randint(1, 9999):04d}",
            "ngay_ct": _fmt(discharged),
        }

    def _add_appointment(
        self, event: dict[str, Any], facility: str, icd: str, discharged: datetime
    ) -> None:
        """A follow-up appointment (XML14) 7 to 30 days after discharge."""
        rng = self.rng
        when = (discharged + timedelta(days=rng.randint(7, 30))).replace(hour=8, minute=0)
        event["ngay_tai_kham"] = when.strftime("%Y%m%d")
        event["appointment"] = {
            "so_giayhen_kl": f"HK{event['ma_lk'][len(facility) :]}",
            "ngay_hen_kl": _fmt(when),
            "chan_doan_rv": icd,
            "ma_bac_si": f"BS{rng.randint(1, 9999):04d}",
            "ngay_ct": _fmt(discharged),
        }

    def _break(self, event: dict[str, Any], kind: str) -> None:
        """Make ``event`` invalid in exactly one way (see INVALID_KINDS)."""
        if kind == "citizen_id_short":
            event["so_cccd"] = event["so_cccd"][:11]
        elif kind == "citizen_id_province":
            event["so_cccd"] = "099" + event["so_cccd"][3:]
        elif kind == "citizen_id_sex":
            digit = int(event["so_cccd"][3])
            event["so_cccd"] = event["so_cccd"][:3] + str(digit ^ 1) + event["so_cccd"][4:]
            if event["gioi_tinh"] == 3:
                event["gioi_tinh"] = 1
        elif kind == "hi_card":
            event["ma_the_bhyt"] = "ZZ" + event["ma_the_bhyt"][2:]
        elif kind == "facility_unknown":
            event["ma_cskcb"] = "79999"
        elif kind == "icd10":
            event["ma_benh_chinh"] = "06.9J"
        elif kind == "discharge_before_admission":
            event["ngay_ra"], event["ngay_vao"] = event["ngay_vao"], event["ngay_ra"]
            if event["ngay_ra"] == event["ngay_vao"]:
                event["ngay_vao"] = event["ngay_vao"][:-2] + "59"
                event["ngay_ra"] = event["ngay_ra"][:-2] + "00"
        elif kind == "negative_money":
            event["t_thuoc"] = -1
        elif kind == "insurer_exceeds_total":
            event["t_tongchi_bh"] = event["t_tongchi_bv"] + 1
        elif kind == "visit_type":
            event["ma_loai_kcb"] = "11"
        else:  # pragma: no cover
            raise ValueError(kind)
