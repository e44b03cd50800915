"""Typed views of the routed topics' records, as the codec decodes them (for type checkers).

The codec returns plain dicts; these ``TypedDict`` s say what is in them, so that a downstream
service can write ``Record[AppointmentRecord]`` and have ``record.value["appointment_at"]``
checked. ``timestamp-millis`` fields decode to timezone-aware UTC ``datetime`` s, enums to
their symbol. Each type has the fields of the *newest* version of its subject (the codec
resolves every record to it); ``tests/ehb/test_consumer_api.py`` fails when a schema gains a field
that is not here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal, TypedDict

from schemas.catalog import SUBJECTS

__all__ = [
    "IN_PROVINCE",
    "OUT_OF_PROVINCE",
    "AppointmentRecord",
    "DeadLetterRecord",
    "HealthBookRecord",
    "ReferralRecord",
    "TYPED_SUBJECTS",
]

#: ``scope`` of a health-book record: the facility is in the province of the citizen's
#: registered primary-care facility (MA_DKBD), or not
IN_PROVINCE: Final = "IN_PROVINCE"
OUT_OF_PROVINCE: Final = "OUT_OF_PROVINCE"


class HealthBookRecord(TypedDict):
    """Topic ``health-book`` (key: citizen_key). Carries personal data."""

    record_type: Literal["EXAMINATION", "BOOK_INTEGRATED"]
    event_id: str
    citizen_key: str
    so_cccd: str
    ho_ten: str
    ngay_sinh: str
    gioi_tinh: int
    ma_the_bhyt: str
    ma_lk: str
    ma_cskcb: str
    facility_name: str
    facility_level: str
    facility_district: str | None
    facility_province: str
    ma_dkbd: str
    registration_province: str
    scope: Literal["IN_PROVINCE", "OUT_OF_PROVINCE"]
    ma_loai_kcb: str
    visit_type: str
    ma_benh_chinh: str
    ma_benh_kt: str | None
    ngay_vao: str
    ngay_ra: str
    ket_qua_dtri: int
    ma_loai_rv: int
    t_tongchi_bv: int
    t_tongchi_bh: int
    t_bhtt: int
    has_referral: bool
    has_appointment: bool
    published_at: datetime
    processed_at: datetime
    #: the episode's version order and identity (docs/corrections.md)
    version: int | None
    position: int
    content_digest: str


class ReferralRecord(TypedDict):
    """Topic ``referrals`` (key: citizen_key). Pseudonymous."""

    record_type: Literal["ISSUED", "COMPLETED", "EXPIRED", "AMENDED", "CANCELLED"]
    referral_id: str
    event_id: str
    citizen_key: str
    origin: str
    destination: str
    ma_lydo_ct: int
    ma_benh_chinh: str
    issued_at: datetime
    deadline: datetime
    event_time: datetime
    arrival_event_id: str | None
    arrived_at: datetime | None
    days_to_arrival: float | None
    published_at: datetime
    #: issued, completed, expired or cancelled, after this record
    status: str


class AppointmentRecord(TypedDict):
    """Topic ``appointments`` (key: citizen_key). Pseudonymous."""

    record_type: Literal["SCHEDULED", "REMINDER", "KEPT", "MISSED", "RESCHEDULED", "CANCELLED"]
    appointment_id: str
    event_id: str
    citizen_key: str
    ma_cskcb: str
    ma_benh_chinh: str
    appointment_at: datetime
    event_time: datetime
    visit_event_id: str | None
    published_at: datetime
    #: scheduled, kept, missed or cancelled, after this record
    status: str


class DeadLetterRecord(TypedDict):
    """Topic ``dead-letter`` (key: facility code when known). ``original`` embeds personal
    data."""

    reason: str
    message: str
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    event_index: int | None
    event_id: str | None
    ma_cskcb: str | None
    schema_id: int | None
    original: bytes
    published_at: datetime
    failed_at: datetime
    original_length: int | None
    original_sha256: str | None
    original_truncated: bool
    ma_lk: str | None


#: subject -> its typed view
TYPED_SUBJECTS: dict[str, type] = {
    SUBJECTS.HEALTH_BOOK_RECORD: HealthBookRecord,
    SUBJECTS.REFERRAL_RECORD: ReferralRecord,
    SUBJECTS.APPOINTMENT_RECORD: AppointmentRecord,
    SUBJECTS.DEAD_LETTER: DeadLetterRecord,
}
