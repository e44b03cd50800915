"""Enrichment: what the registry and the codes say about a valid examination event.

facility -> name, level, district, province; MA_DKBD -> registration province; the two
provinces -> in/out-of-province scope; MA_LOAI_KCB -> visit-type label; NGAY_VAO -> event time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.records import IN_PROVINCE, OUT_OF_PROVINCE
from schemas.reference import FacilityRegistry
from schemas.time import event_time_ms

__all__ = ["VISIT_TYPES", "enrich"]

VISIT_TYPES = {
    "01": "outpatient exam",
    "02": "outpatient treatment",
    "03": "inpatient",
    "04": "day inpatient",
    "05": "chronic outpatient exam and drugs",
    "06": "commune health station stay",
    "07": "drugs by appointment",
    "08": "chronic outpatient exam and services",
    "09": "inpatient under 4 hours",
    "10": "other",
}


def enrich(
    event: Mapping[str, Any], registry: FacilityRegistry, citizen_key: str, published_at: int
) -> dict[str, Any]:
    """A ValidatedExamination record (schemas/avro/validated_batch.v1.avsc) for a valid event."""
    facility = registry.get(event["ma_cskcb"])
    if facility is None:  # validated events are in the registry; a refresh may race
        raise KeyError(event["ma_cskcb"])
    registration_province = event["ma_dkbd"][:2]
    return {
        "citizen_key": citizen_key,
        "facility_name": facility.name,
        "facility_level": facility.level,
        "facility_district": facility.district,
        "facility_province": facility.province,
        "registration_province": registration_province,
        "scope": IN_PROVINCE if registration_province == facility.province else OUT_OF_PROVINCE,
        "visit_type": VISIT_TYPES[event["ma_loai_kcb"]],
        "event_time": event_time_ms(event["ngay_vao"]),
        "published_at": published_at,
        "event": event,
    }
