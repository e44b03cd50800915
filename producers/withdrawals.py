"""A facility's withdrawal list as a HIS drops it for the gateway: a ``HUYHOSO`` file.

QĐ 4750 defines no withdrawal dossier, so the project reads this small file beside the
``GIAMDINHHS`` envelopes (docs/corrections.md, Withdrawal)::

    <HUYHOSO>
      <MACSKCB>79001</MACSKCB>
      <HOSO><MA_LK>...</MA_LK><SO_CCCD>...</SO_CCCD><LY_DO>gửi nhầm</LY_DO></HOSO>
      ...
    </HUYHOSO>

A file is published whole as one ``ExaminationWithdrawalBatch`` or rejected with a gateway
reason code (``xml_forbidden``, ``xml_malformed``, ``envelope_invalid``,
``episode_duplicated``), like a dossier.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET  # noqa: S405 - used only to *write* XML; parsing is defused
from collections.abc import Iterable, Mapping
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring, iterparse

from producers.errors import DossierRejected
from schemas.episodes import derived_event_id

__all__ = ["ROOT", "encode_withdrawals", "is_withdrawal_list", "parse_withdrawals"]

ROOT = "HUYHOSO"


def is_withdrawal_list(data: bytes) -> bool:
    """The file's root element is ``HUYHOSO`` (anything unreadable: not one)."""
    try:
        for _, element in iterparse(io.BytesIO(data), ("start",), forbid_dtd=True):
            return bool(element.tag == ROOT)
    except (DefusedXmlException, ParseError, LookupError, ValueError):
        return False
    return False


def _text(element: Any, name: str) -> str:
    found = element.find(name)
    return (found.text or "").strip() if found is not None else ""


def parse_withdrawals(data: bytes) -> tuple[str, list[dict[str, Any]]]:
    """(facility, ExaminationWithdrawal records) of a ``HUYHOSO`` file."""
    try:
        root = fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise DossierRejected("xml_forbidden", type(exc).__name__) from None
    except ParseError as exc:
        raise DossierRejected("xml_malformed", str(exc)) from None
    except (LookupError, ValueError) as exc:
        raise DossierRejected("xml_malformed", f"encoding: {exc}") from None
    if root.tag != ROOT:
        raise DossierRejected("envelope_invalid", f"root element {root.tag}, expected {ROOT}")
    facility = _text(root, "MACSKCB")
    if not facility:
        raise DossierRejected("envelope_invalid", "MACSKCB is missing or empty")
    withdrawals: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, hoso in enumerate(root.findall("HOSO"), 1):
        ma_lk, so_cccd = _text(hoso, "MA_LK"), _text(hoso, "SO_CCCD")
        if not ma_lk or not so_cccd:
            raise DossierRejected("envelope_invalid", f"HOSO {index}: MA_LK or SO_CCCD is empty")
        first = seen.setdefault(ma_lk, index)
        if first != index:
            raise DossierRejected(
                "episode_duplicated", f"HOSO {first} and {index} have MA_LK {ma_lk!r}"
            )
        withdrawal = {
            "event_id": "",
            "ma_cskcb": facility,
            "ma_lk": ma_lk,
            "so_cccd": so_cccd,
            "ly_do": _text(hoso, "LY_DO"),
            "version": None,
        }
        withdrawal["event_id"] = derived_event_id({**withdrawal, "withdrawn": True})
        withdrawals.append(withdrawal)
    return facility, withdrawals


def encode_withdrawals(facility: str, withdrawals: Iterable[Mapping[str, Any]]) -> bytes:
    """A ``HUYHOSO`` file (what a HIS writes; the tests and the examples use it)."""
    root = ET.Element(ROOT)
    ET.SubElement(root, "MACSKCB").text = facility
    for w in withdrawals:
        hoso = ET.SubElement(root, "HOSO")
        for name in ("ma_lk", "so_cccd", "ly_do"):
            ET.SubElement(hoso, name.upper()).text = str(w.get(name) or "")
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")
