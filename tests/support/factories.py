"""Hand-made examination events with known properties (valid unless a test breaks them)."""

from __future__ import annotations

import copy
import itertools
import uuid
from datetime import datetime, timedelta
from typing import Any

from schemas.time import VN_TZ

_seq = itertools.count(1)

BASE_TIME = datetime(2024, 3, 4, 8, 0, tzinfo=VN_TZ)


def fmt(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M")


def citizen_id(n: int, sex: int = 1, year: int = 1985, province: str = "79") -> str:
    """A valid 12-digit citizen ID for a person born in ``year`` of ``sex`` (1 m, 2 f)."""
    century_digit = (year // 100 - 19) * 2 + (sex - 1)
    return f"0{province}{century_digit}{year % 100:02d}{n:06d}"


def exam(
    n: int | None = None,
    *,
    facility: str = "79001",
    admitted: datetime | None = None,
    hours: float = 2,
    sex: int = 1,
    year: int = 1985,
    registration: str = "79005",
    name: str = "Nguyễn Văn An",
    **overrides: Any,
) -> dict[str, Any]:
    """A valid exam of citizen ``n`` at ``facility``. ``registration`` is MA_DKBD."""
    n = next(_seq) if n is None else n
    k = next(_seq)
    admitted = admitted or BASE_TIME
    discharged = admitted + timedelta(hours=hours)
    ma_lk = f"LK{facility}{k:08d}"
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "ma_lk": ma_lk,
        "ma_bn": f"BN{n:06d}",
        "ho_ten": name,
        "so_cccd": citizen_id(n, sex, year),
        "ngay_sinh": f"{year}0615" + "0000",
        "gioi_tinh": sex,
        "matinh_cu_tru": registration[:2],
        "ma_the_bhyt": f"GD4{registration[:2]}{n:010d}",
        "ma_dkbd": registration,
        "gt_the_tu": "20240101",
        "gt_the_den": "20241231",
        "ma_benh_chinh": "J06.9",
        "ma_benh_kt": "I10;E11.9",
        "ma_doituong_kcb": "1.1",
        "ma_noi_di": None,
        "ma_noi_den": None,
        "ngay_vao": fmt(admitted),
        "ngay_ra": fmt(discharged),
        "so_ngay_dtri": 1,
        "ket_qua_dtri": 1,
        "ma_loai_rv": 1,
        "ma_loai_kcb": "01",
        "ma_khoa": "K01",
        "ma_cskcb": facility,
        "ngay_tai_kham": None,
        "t_thuoc": 100_000,
        "t_vtyt": 10_000,
        "t_tongchi_bv": 300_000,
        "t_tongchi_bh": 270_000,
        "t_bntt": 30_000,
        "t_bncct": 27_000,
        "t_bhtt": 243_000,
        "t_nguonkhac": 0,
        "nam_qt": discharged.year,
        "thang_qt": discharged.month,
        "referral": None,
        "appointment": None,
    }
    event.update(overrides)
    return event


def with_referral(
    event: dict[str, Any],
    destination: str = "79002",
    number: str | None = None,
    issued: datetime | None = None,
) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event["ma_loai_rv"] = 2
    event["ma_noi_den"] = destination
    event["referral"] = {
        "so_hoso": event["ma_lk"],
        "so_chuyentuyen": number or f"CT{next(_seq):07d}",
        "giay_chuyen_tuyen": None,
        "ma_noi_di": event["ma_cskcb"],
        "ma_noi_den": destination,
        "dau_hieu_ls": "Sốt cao, ho khan",
        "chan_doan_rv": "Viêm phổi",
        "qt_benhly": "Điều trị 3 ngày không đáp ứng",
        "huong_dieu_tri": "Chuyển tuyến trên",
        "phuongtien_vc": None,
        "ma_lydo_ct": 2,
        "ma_bac_si": "BS0001",
        "ngay_ct": fmt(issued) if issued else event["ngay_ra"],
    }
    return event


def with_appointment(
    event: dict[str, Any], when: datetime, number: str | None = None
) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event["appointment"] = {
        "so_giayhen_kl": number or f"HK{next(_seq):07d}",
        "ngay_hen_kl": fmt(when),
        "chan_doan_rv": "Tăng huyết áp",
        "ma_bac_si": "BS0002",
        "ngay_ct": event["ngay_ra"],
    }
    return event


#: an XML entity expansion bomb (a dossier's prolog)
BOMB = (
    '<!DOCTYPE GIAMDINHHS [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;">]>'
)
