"""The QĐ 130/4750 upload envelope (``GIAMDINHHS``): parse a dossier file into examination
events, and write one (for the simulated hospital systems).

A dossier file is what a facility's hospital information system (HIS) exports for the Health
Insurance appraisal portal::

    GIAMDINHHS
      THONGTINDONVI/MACSKCB                 the facility
      THONGTINHOSO/NGAYLAP, SOLUONGHOSO     creation date, number of episodes (HOSO)
      THONGTINHOSO/DANHSACHHOSO/HOSO*       one episode each
        FILEHOSO*/LOAIHOSO                  XML1 ... XML15
                 /NOIDUNGFILE               base64 of that table's XML
      CHUKYDONVI                            the facility's signature (not verified here)

Of the tables, XML1 (``TONG_HOP``, the episode summary), XML13
(``CHI_TIEU_GIAYCHUYENTUYEN``, the referral letter) and XML14
(``CHI_TIEU_GIAYHEN_KHAMLAI``, the follow-up appointment) become one ``ExaminationEvent``
per episode, joined on ``MA_LK``; the other tables (drugs, services, labs ...) are checked for
valid base64 and otherwise ignored. Element names are the standard's upper-case names, which
are the Avro field names in lower case; the mapping is read from the newest
ExaminationEvent schema, so a field added through schema evolution is picked up here without
code. QĐ 3176's ``MA_CSKCB_DI``/``MA_CSKCB_DEN`` are accepted for XML13's
``MA_NOI_DI``/``MA_NOI_DEN`` (the older name wins when both are filled).

The parser only refuses what cannot become events (``schemas.reasons.GATEWAY_REASONS``): a
file that is not well-formed, declares a DTD (XML bombs, external entities), has bad base64,
an episode without XML1, tables that do not join, a facility that disagrees with the
envelope, an episode count that disagrees with ``SOLUONGHOSO``, or a number that is not a
number.
Field values are not judged: an empty name or a malformed citizen ID is published and the
stream worker dead-letters it with its own reason code.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import xml.etree.ElementTree as ET  # noqa: S405 - used only to *write* XML; parsing is defused
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from xml.etree.ElementTree import Element  # noqa: S405 - type only

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring, iterparse

from producers.errors import DossierRejected
from schemas import SUBJECTS, Catalog, load_catalog
from schemas.episodes import derived_event_id

__all__ = [
    "Dossier",
    "DossierRejected",
    "Limits",
    "encode_dossier",
    "event_id_for",
    "parse_dossier",
]

ROOT = "GIAMDINHHS"
#: LOAIHOSO -> root element of that table
TABLE_ROOTS = {
    "XML1": "TONG_HOP",
    "XML13": "CHI_TIEU_GIAYCHUYENTUYEN",
    "XML14": "CHI_TIEU_GIAYHEN_KHAMLAI",
}
#: XML13 element names of QĐ 3176 accepted for the field (after the standard's own name)
XML13_ALIASES = {"ma_noi_di": ("MA_CSKCB_DI",), "ma_noi_den": ("MA_CSKCB_DEN",)}


@dataclass(frozen=True)
class Limits:
    #: largest dossier file read (bytes)
    max_file_bytes: int = 64 * 1024 * 1024
    #: largest NOIDUNGFILE (base64 characters) of one table
    max_table_base64: int = 16 * 1024 * 1024


@dataclass
class Dossier:
    facility: str
    created: str | None
    declared: int
    events: list[dict[str, Any]] = field(default_factory=list)
    #: LOAIHOSO of tables read but not turned into events (XML2, XML3 ...) -> count
    other_tables: Counter[str] = field(default_factory=Counter)


def event_id_for(event: dict[str, Any]) -> str:
    """The same id ``ehb publish FILE.jsonl`` gives an event without one: the same for a
    re-export of the same content, another for a corrected version (``schemas.episodes``)."""
    return derived_event_id(event)


# -- the shape of an event, read from the newest schema --------------------------------------
#: the event's fields that are not XML1 columns: ours (event id, sender version) and the
#: episode's XML13 and XML14 tables
_NOT_XML1 = ("event_id", "version", "referral", "appointment")
_KINDS = ("string", "int", "long", "float", "double")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    tags: tuple[str, ...]
    kind: str  # one of _KINDS, or "other" (always its default)
    nullable: bool
    has_default: bool
    default: Any


@dataclass(frozen=True)
class _Shape:
    episode: tuple[_Field, ...]
    referral: tuple[_Field, ...]
    appointment: tuple[_Field, ...]


def _fields(
    record: Mapping[str, Any],
    skip: Iterable[str] = (),
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[_Field, ...]:
    out = []
    for spec in record["fields"]:
        name = spec["name"]
        if name in skip:
            continue
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        concrete = [t for t in types if t != "null"]
        kind = concrete[0] if len(concrete) == 1 and concrete[0] in _KINDS else "other"
        if kind == "other" and "default" not in spec:
            raise ValueError(f"field {name}: type {spec['type']!r} has no XML mapping")
        tags = (name.upper(), *(aliases or {}).get(name, ()))
        out.append(
            _Field(name, tags, kind, "null" in types, "default" in spec, spec.get("default"))
        )
    return tuple(out)


def _nested(record: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    spec = next(f for f in record["fields"] if f["name"] == name)
    return next(t for t in spec["type"] if isinstance(t, dict) and t.get("type") == "record")


@cache
def _shape(catalog: Catalog) -> _Shape:
    raw = catalog.latest(SUBJECTS.EXAMINATION_EVENT).raw
    return _Shape(
        episode=_fields(raw, skip=_NOT_XML1),
        referral=_fields(_nested(raw, "referral"), aliases=XML13_ALIASES),
        appointment=_fields(_nested(raw, "appointment")),
    )


# -- parsing --------------------------------------------------------------------------------
_INTEGER = re.compile(r"[+-]?\d{1,19}(?:\.0*)?\Z")
_DECIMAL = re.compile(r"[+-]?\d{1,15}(?:\.\d{1,15})?\Z")
_BITS = {"int": 32, "long": 64}


def _local(tag: str) -> str:
    return tag.rpartition("}")[2].upper()


def _children(element: Element) -> dict[str, str | None]:
    """Direct children's text by upper-case local name (the first of duplicates)."""
    out: dict[str, str | None] = {}
    for child in element:
        out.setdefault(_local(child.tag), child.text)
    return out


def _filled(text: str | None) -> bool:
    return text is not None and text.strip() != ""


def _convert(
    fields: tuple[_Field, ...], values: Mapping[str, str | None], where: str
) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for f in fields:
        text = next((values[t] for t in f.tags if _filled(values.get(t))), None)
        if text is None:
            if f.has_default:
                record[f.name] = f.default
            elif f.kind == "string":
                record[f.name] = ""  # the worker dead-letters it (required_field_missing ...)
            else:
                raise DossierRejected("number_invalid", f"{where}: {f.tags[0]} is missing")
        elif f.kind == "string":
            record[f.name] = text
        elif f.kind in _BITS:
            value = text.strip()
            bits = _BITS[f.kind]
            number = int(value.partition(".")[0]) if _INTEGER.match(value) else None
            if number is None or not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
                raise DossierRejected(
                    "number_invalid", f"{where}: {f.tags[0]} is not a whole number"
                )
            record[f.name] = number
        elif f.kind in ("float", "double"):
            value = text.strip()
            if not _DECIMAL.match(value):
                raise DossierRejected("number_invalid", f"{where}: {f.tags[0]} is not a number")
            record[f.name] = float(value)
        else:
            record[f.name] = f.default
    return record


def _table(kind: str, content: str | None, where: str, limits: Limits) -> Element | None:
    """Decode one NOIDUNGFILE; parse it when it is a table we use (XML1/13/14)."""
    text = (content or "").strip()
    if len(text) > limits.max_table_base64:
        raise DossierRejected(
            "base64_too_large",
            f"{where}: {len(text)} base64 characters (limit {limits.max_table_base64})",
        )
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DossierRejected("base64_invalid", f"{where}: {exc}") from None
    root_tag = TABLE_ROOTS.get(kind)
    if root_tag is None:
        return None
    try:
        root = fromstring(raw, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise DossierRejected("xml_forbidden", f"{where}: {type(exc).__name__}") from None
    except ParseError as exc:
        raise DossierRejected("table_malformed", f"{where}: {exc}") from None
    except (LookupError, ValueError) as exc:  # an encoding Python does not know or cannot use
        raise DossierRejected("table_malformed", f"{where}: encoding: {exc}") from None
    if _local(root.tag) != root_tag:
        raise DossierRejected(
            "table_malformed", f"{where}: root is {_local(root.tag)}, expected {root_tag}"
        )
    return root


def _episode(
    index: int, tables: list[tuple[str, Element | None]], shape: _Shape, facility: str
) -> dict[str, Any]:
    where = f"HOSO {index}"
    by_kind: dict[str, dict[str, str | None]] = {}
    for kind, root in tables:
        if root is None:
            continue
        if kind in by_kind:
            raise DossierRejected("table_duplicated", f"{where}: {kind} appears twice")
        by_kind[kind] = _children(root)
    summary = by_kind.get("XML1")
    if summary is None:
        raise DossierRejected("xml1_missing", f"{where}: no XML1 (TONG_HOP)")
    ma_lk = summary.get("MA_LK")
    if not _filled(ma_lk):
        raise DossierRejected("ma_lk_missing", f"{where}: XML1 has no MA_LK")
    assert ma_lk is not None
    for kind, values in by_kind.items():
        other = values.get("MA_LK")
        if not _filled(other):
            raise DossierRejected("ma_lk_missing", f"{where}: {kind} has no MA_LK")
        if other != ma_lk:
            raise DossierRejected(
                "tables_do_not_join", f"{where}: {kind} MA_LK {other!r} != XML1 MA_LK {ma_lk!r}"
            )
        own = values.get("MA_CSKCB")
        if _filled(own) and own != facility:
            raise DossierRejected(
                "facility_mismatch",
                f"{where} ({ma_lk}): {kind} MA_CSKCB {own!r} in a file of MACSKCB {facility!r}",
            )
    # the event id is derived from the content once it is complete; the sender's version is
    # the publisher's to set
    event: dict[str, Any] = {"event_id": "", "version": None}
    event.update(_convert(shape.episode, summary, f"{where} ({ma_lk}) XML1"))
    if not _filled(summary.get("MA_CSKCB")):
        event["ma_cskcb"] = facility
    event["referral"] = (
        _convert(shape.referral, by_kind["XML13"], f"{where} ({ma_lk}) XML13")
        if "XML13" in by_kind
        else None
    )
    event["appointment"] = (
        _convert(shape.appointment, by_kind["XML14"], f"{where} ({ma_lk}) XML14")
        if "XML14" in by_kind
        else None
    )
    event["event_id"] = event_id_for(event)
    return event


@dataclass
class _Envelope:
    """The envelope as it is read: its header, and each HOSO's (LOAIHOSO, table) pairs."""

    limits: Limits
    facility: str | None = None
    created: str | None = None
    declared: str | None = None
    hoso: list[list[tuple[str, Element | None]]] = field(default_factory=list)
    other: Counter[str] = field(default_factory=Counter)
    #: names of the elements open, outermost first
    stack: list[str] = field(default_factory=list)

    def start(self, element: Element) -> None:
        name = _local(element.tag)
        if not self.stack and name != ROOT:
            raise DossierRejected("envelope_invalid", f"root is {name}, not {ROOT}")
        if name == "HOSO" and self.stack[-1:] == ["DANHSACHHOSO"]:
            self.hoso.append([])
        self.stack.append(name)

    def end(self, element: Element) -> None:
        stack = self.stack
        name = stack.pop()
        parent = stack[-1] if stack else None
        if name == "MACSKCB" and parent == "THONGTINDONVI":
            self.facility = (element.text or "").strip()
        elif name == "NGAYLAP" and parent == "THONGTINHOSO":
            self.created = (element.text or "").strip() or None
        elif name == "SOLUONGHOSO" and parent == "THONGTINHOSO":
            self.declared = (element.text or "").strip()
        elif name == "FILEHOSO" and stack[-2:] == ["DANHSACHHOSO", "HOSO"]:
            self._file(element)
            element.clear()
        elif name == "HOSO" and parent == "DANHSACHHOSO":
            element.clear()  # keep memory bounded by one episode's tables

    def _file(self, element: Element) -> None:
        """One FILEHOSO: its table, decoded, joins the current HOSO's."""
        parts = _children(element)
        kind = (parts.get("LOAIHOSO") or "").strip().upper()
        where = f"HOSO {len(self.hoso)}, FILEHOSO {kind or '?'}"
        if not kind or "NOIDUNGFILE" not in parts:
            raise DossierRejected("envelope_invalid", f"{where}: LOAIHOSO or NOIDUNGFILE missing")
        table = _table(kind, parts["NOIDUNGFILE"], where, self.limits)
        self.hoso[-1].append((kind, table))
        if kind not in TABLE_ROOTS:
            self.other[kind] += 1


def _read_envelope(data: bytes, limits: Limits) -> _Envelope:
    """The file's XML read into an :class:`_Envelope`; XML that cannot be read is rejected."""
    envelope = _Envelope(limits)
    try:
        for action, element in iterparse(io.BytesIO(data), ("start", "end"), forbid_dtd=True):
            if action == "start":
                envelope.start(element)
            else:
                envelope.end(element)
    except DefusedXmlException as exc:
        raise DossierRejected("xml_forbidden", type(exc).__name__) from None
    except ParseError as exc:
        raise DossierRejected("xml_malformed", str(exc)) from None
    except (LookupError, ValueError) as exc:  # encoding="ttf-8", "utf-32": expat cannot read it
        raise DossierRejected("xml_malformed", f"encoding: {exc}") from None
    return envelope


def _checked_header(envelope: _Envelope) -> tuple[str, int]:
    """The facility and the declared number of HOSO, once they are there and agree."""
    facility, declared = envelope.facility, envelope.declared
    if not facility:
        raise DossierRejected("envelope_invalid", "THONGTINDONVI/MACSKCB is missing or empty")
    if declared is None or not declared.isdigit():
        raise DossierRejected(
            "envelope_invalid", "THONGTINHOSO/SOLUONGHOSO is missing or not a number"
        )
    if int(declared) != len(envelope.hoso):
        raise DossierRejected(
            "count_mismatch",
            f"SOLUONGHOSO is {int(declared)}, the file has {len(envelope.hoso)} HOSO",
        )
    return facility, int(declared)


def parse_dossier(
    data: bytes, limits: Limits | None = None, catalog: Catalog | None = None
) -> Dossier:
    """Parse one envelope file's bytes; :class:`DossierRejected` when it cannot be events."""
    limits = limits or Limits()
    if len(data) > limits.max_file_bytes:
        raise DossierRejected(
            "file_too_large", f"{len(data)} bytes (limit {limits.max_file_bytes})"
        )
    shape = _shape(catalog or load_catalog())
    envelope = _read_envelope(data, limits)
    facility, declared = _checked_header(envelope)
    dossier = Dossier(facility, envelope.created, declared, other_tables=envelope.other)
    seen: dict[str, int] = {}
    for index, tables in enumerate(envelope.hoso, 1):
        event = _episode(index, tables, shape, facility)
        first = seen.setdefault(event["ma_lk"], index)
        if first != index:
            raise DossierRejected(
                "episode_duplicated", f"HOSO {first} and {index} have MA_LK {event['ma_lk']!r}"
            )
        dossier.events.append(event)
    return dossier


# -- writing (what a HIS exports) -------------------------------------------------------------
#: XML13/XML14 element order: the table's own fields, then the patient fields it repeats
_XML13_ORDER = (
    "MA_LK",
    "SO_HOSO",
    "SO_CHUYENTUYEN",
    "GIAY_CHUYEN_TUYEN",
    "MA_CSKCB",
    "MA_NOI_DI",
    "MA_NOI_DEN",
    "HO_TEN",
    "NGAY_SINH",
    "GIOI_TINH",
    "MA_THE_BHYT",
    "GT_THE_DEN",
    "NGAY_VAO",
    "NGAY_RA",
    "DAU_HIEU_LS",
    "CHAN_DOAN_RV",
    "QT_BENHLY",
    "MA_BENH_CHINH",
    "MA_BENH_KT",
    "HUONG_DIEU_TRI",
    "PHUONGTIEN_VC",
    "MA_LYDO_CT",
    "MA_BAC_SI",
    "NGAY_CT",
)
_XML14_ORDER = (
    "MA_LK",
    "SO_GIAYHEN_KL",
    "MA_CSKCB",
    "HO_TEN",
    "NGAY_SINH",
    "GIOI_TINH",
    "MA_THE_BHYT",
    "GT_THE_DEN",
    "NGAY_VAO",
    "NGAY_RA",
    "NGAY_HEN_KL",
    "CHAN_DOAN_RV",
    "MA_BENH_CHINH",
    "MA_BENH_KT",
    "MA_DOITUONG_KCB",
    "MA_BAC_SI",
    "NGAY_CT",
)
_QD3176_NAMES = {"MA_NOI_DI": "MA_CSKCB_DI", "MA_NOI_DEN": "MA_CSKCB_DEN"}


def _table_xml(
    root_tag: str,
    order: Iterable[str],
    own: Mapping[str, Any],
    episode: Mapping[str, Any],
    rename: Mapping[str, str] | None = None,
) -> bytes:
    root = ET.Element(root_tag)
    tags = list(order) + [k.upper() for k in own if k.upper() not in order]
    for tag in tags:
        name = tag.lower()
        value = own[name] if name in own else episode.get(name)
        child = ET.SubElement(root, (rename or {}).get(tag, tag))
        if value is not None:
            child.text = str(value)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _file(hoso: Element, kind: str, content: bytes) -> None:
    entry = ET.SubElement(hoso, "FILEHOSO")
    ET.SubElement(entry, "LOAIHOSO").text = kind
    ET.SubElement(entry, "NOIDUNGFILE").text = base64.b64encode(content).decode("ascii")


def encode_dossier(
    facility: str,
    events: Iterable[Mapping[str, Any]],
    *,
    created: str | None = None,
    qd3176: bool = False,
) -> bytes:
    """A GIAMDINHHS file of ``events`` (ExaminationEvent dicts), UTF-8, one HOSO each.

    ``qd3176`` writes XML13's facility fields under QĐ 3176's names (MA_CSKCB_DI/DEN).
    Text must be XML-representable (no control characters other than tab/newline).
    """
    events = list(events)
    root = ET.Element(ROOT)
    ET.SubElement(ET.SubElement(root, "THONGTINDONVI"), "MACSKCB").text = facility
    info = ET.SubElement(root, "THONGTINHOSO")
    ET.SubElement(info, "NGAYLAP").text = created or ""
    ET.SubElement(info, "SOLUONGHOSO").text = str(len(events))
    listing = ET.SubElement(info, "DANHSACHHOSO")
    for event in events:
        hoso = ET.SubElement(listing, "HOSO")
        summary = {k: v for k, v in event.items() if k not in _NOT_XML1}
        _file(hoso, "XML1", _table_xml("TONG_HOP", [k.upper() for k in summary], summary, {}))
        if event.get("referral"):
            _file(
                hoso,
                "XML13",
                _table_xml(
                    TABLE_ROOTS["XML13"],
                    _XML13_ORDER,
                    event["referral"],
                    event,
                    _QD3176_NAMES if qd3176 else None,
                ),
            )
        if event.get("appointment"):
            _file(
                hoso,
                "XML14",
                _table_xml(TABLE_ROOTS["XML14"], _XML14_ORDER, event["appointment"], event),
            )
    ET.SubElement(root, "CHUKYDONVI")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
