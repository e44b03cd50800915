"""The reason codes of every stage, in one table: why an input was refused, and what the
facility (or the operator) should fix, in Vietnamese and in English.

* ``gateway``: the XML dossier gateway refuses a file (``producers.gateway``; the file is moved
  aside with a ``.reason.txt``);
* ``decode``: a Kafka message is not a message of ours (the worker's intake, ``schemas.codec``);
* ``validate``: an examination event breaks a rule of QĐ 130/4750 (``streams.validation``);
* ``sink``: PostgreSQL refuses a record, or a daily report is malformed (``sinks``).

The last three end in a dead letter whose ``stage`` is the code's stage. Codes are stable
identifiers: never renamed, never reused (a code belongs to one stage). The tables of
docs/reference.md and docs/gateway.md are generated from here (``make docs``).

The people who fix the data at a facility read Vietnamese: every code has its meaning and fix
in both languages, written in the words of the standard (hồ sơ, mã cơ sở KCB, thẻ BHYT, CCCD,
giấy chuyển tuyến XML13, giấy hẹn khám lại XML14); field names stay as the XML spells them.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = [
    "GATEWAY_REASONS",
    "LANGUAGES",
    "REASONS",
    "REASON_CODES",
    "STAGES",
    "Language",
    "Reason",
    "gateway_reasons_markdown",
    "reason_stage",
    "reasons_markdown",
]

STAGES = ("gateway", "decode", "validate", "sink")

Language = Literal["vi", "en"]
#: the languages of every reason, Vietnamese (the facilities' language) first
LANGUAGES: tuple[Language, ...] = ("vi", "en")


class Reason(NamedTuple):
    stage: str
    meaning: str
    fix: str
    meaning_vi: str
    fix_vi: str

    def text(self, language: Language) -> tuple[str, str]:
        """(what it means, what to fix) in ``language``."""
        if language == "vi":
            return self.meaning_vi, self.fix_vi
        if language == "en":
            return self.meaning, self.fix
        raise ValueError(f"unknown language {language!r}")


#: code -> (meaning, fix, meaning in Vietnamese, fix in Vietnamese)
_Texts = tuple[str, str, str, str]

_GATEWAY: dict[str, _Texts] = {
    "file_unreadable": (
        "The file could not be read (permissions, I/O error, removed).",
        "Operator: check the drop directory's permissions and disk.",
        "Không đọc được tệp (không có quyền đọc, lỗi đọc ghi, hoặc tệp đã bị xoá).",
        "Quản trị viên: kiểm tra quyền truy cập thư mục nhận tệp và ổ đĩa.",
    ),
    "file_too_large": (
        "The file exceeds the gateway's size limit.",
        "Split the day's upload into several files.",
        "Tệp vượt quá dung lượng tối đa mà cổng tiếp nhận cho phép.",
        "Chia dữ liệu gửi trong ngày thành nhiều tệp.",
    ),
    "xml_malformed": (
        "The envelope is not well-formed XML.",
        "Export the file again; check the HIS export for truncation/encoding.",
        "Tệp gói hồ sơ không đúng cấu trúc XML.",
        "Xuất lại tệp từ phần mềm HIS; kiểm tra tệp không bị cắt cụt và đúng bảng mã UTF-8.",
    ),
    "xml_forbidden": (
        "The XML declares a DTD or entities (XML bombs, external entities are refused).",
        "Export plain XML without a DOCTYPE.",
        "Tệp XML có khai báo DTD hoặc thực thể (entity); cổng từ chối để phòng XML bomb và "
        "thực thể ngoài.",
        "Xuất tệp XML thông thường, không có khai báo DOCTYPE.",
    ),
    "envelope_invalid": (
        "The GIAMDINHHS envelope is incomplete: wrong root, MACSKCB or "
        "SOLUONGHOSO missing, or a FILEHOSO without LOAIHOSO/NOIDUNGFILE.",
        "Export the envelope of QĐ 130/4750 in full.",
        "Gói hồ sơ GIAMDINHHS không đầy đủ: sai thẻ gốc, thiếu MACSKCB hoặc SOLUONGHOSO, "
        "hoặc có FILEHOSO thiếu LOAIHOSO/NOIDUNGFILE.",
        "Xuất đầy đủ cấu trúc gói hồ sơ theo QĐ 130/4750.",
    ),
    "count_mismatch": (
        "SOLUONGHOSO differs from the number of HOSO in the file.",
        "Export the file again; it may be truncated.",
        "SOLUONGHOSO khác với số HOSO có trong tệp.",
        "Xuất lại tệp; tệp có thể đã bị cắt cụt.",
    ),
    "base64_invalid": (
        "A NOIDUNGFILE is not valid base64.",
        "Encode each table with standard base64.",
        "Một NOIDUNGFILE không phải chuỗi base64 hợp lệ.",
        "Mã hoá nội dung từng bảng XML bằng base64 chuẩn.",
    ),
    "base64_too_large": (
        "A NOIDUNGFILE exceeds the gateway's size limit for one table.",
        "Split the upload into several files.",
        "Một NOIDUNGFILE vượt quá dung lượng tối đa cho một bảng.",
        "Chia dữ liệu thành nhiều tệp.",
    ),
    "table_malformed": (
        "A decoded table is not well-formed XML or has the wrong root element "
        "for its LOAIHOSO (TONG_HOP, CHI_TIEU_GIAYCHUYENTUYEN, "
        "CHI_TIEU_GIAYHEN_KHAMLAI).",
        "Export the tables of QĐ 130/4750.",
        "Một bảng sau khi giải mã không đúng cấu trúc XML, hoặc thẻ gốc không khớp LOAIHOSO "
        "(TONG_HOP, CHI_TIEU_GIAYCHUYENTUYEN, CHI_TIEU_GIAYHEN_KHAMLAI).",
        "Xuất các bảng đúng mẫu của QĐ 130/4750.",
    ),
    "xml1_missing": (
        "A HOSO has no XML1 (TONG_HOP) table.",
        "Every episode needs its XML1 summary.",
        "Một HOSO không có bảng XML1 (TONG_HOP, bảng chỉ tiêu tổng hợp khám bệnh, chữa bệnh).",
        "Mỗi hồ sơ phải có bảng tổng hợp XML1.",
    ),
    "table_duplicated": (
        "A HOSO has the same table (XML1, XML13 or XML14) twice.",
        "Send each table once per episode.",
        "Một HOSO có cùng một bảng (XML1, XML13 hoặc XML14) hai lần.",
        "Mỗi bảng chỉ gửi một lần trong một hồ sơ.",
    ),
    "ma_lk_missing": (
        "A table has no MA_LK, so it cannot be joined to its episode.",
        "Fill MA_LK in every table.",
        "Một bảng không có MA_LK (mã liên kết) nên không ghép được vào hồ sơ.",
        "Điền MA_LK ở tất cả các bảng.",
    ),
    "tables_do_not_join": (
        "An XML13/XML14 table's MA_LK differs from its HOSO's XML1 MA_LK.",
        "Put the tables of one episode, with the same MA_LK, in one HOSO.",
        "MA_LK của giấy chuyển tuyến (XML13) hoặc giấy hẹn khám lại (XML14) khác MA_LK của "
        "bảng XML1 trong cùng HOSO.",
        "Đặt các bảng của cùng một hồ sơ, cùng MA_LK, vào một HOSO.",
    ),
    "episode_duplicated": (
        "Two HOSO of the file have the same MA_LK.",
        "Send each episode once per file.",
        "Hai HOSO trong tệp có cùng MA_LK.",
        "Mỗi hồ sơ chỉ gửi một lần trong một tệp.",
    ),
    "facility_mismatch": (
        "A table's MA_CSKCB differs from the envelope's MACSKCB.",
        "Send each facility's episodes in its own file.",
        "MA_CSKCB của một bảng khác mã cơ sở KCB (MACSKCB) của gói hồ sơ.",
        "Gửi hồ sơ của mỗi cơ sở KCB trong tệp riêng.",
    ),
    "number_invalid": (
        "A numeric field (code, count, VND amount, weight) is missing or not "
        "a number; codes, counts and amounts must be whole numbers.",
        "Send numbers, e.g. GIOI_TINH 1, T_TONGCHI_BV 250000, CAN_NANG 62.5.",
        "Một trường số (mã, số lượng, số tiền VNĐ, cân nặng) bị trống hoặc không phải số; "
        "mã, số lượng và số tiền phải là số nguyên.",
        "Ghi đúng dạng số, ví dụ GIOI_TINH 1, T_TONGCHI_BV 250000, CAN_NANG 62.5 "
        "(dấu chấm thập phân, không ghi đơn vị).",
    ),
    "dossier_too_large": (
        "The file's episodes do not fit in one Kafka message (the gateway "
        "publishes a file whole or not at all).",
        "Split the upload into several files of fewer episodes.",
        "Các hồ sơ trong tệp không vừa một bản tin Kafka (cổng gửi cả tệp hoặc không gửi "
        "hồ sơ nào).",
        "Chia dữ liệu thành nhiều tệp, mỗi tệp ít hồ sơ hơn.",
    ),
}

_DECODE: dict[str, _Texts] = {
    "empty_message": (
        "The Kafka message has no value.",
        "Send the event body.",
        "Bản tin Kafka không có nội dung.",
        "Gửi kèm nội dung hồ sơ trong bản tin.",
    ),
    "bad_magic_byte": (
        "The value is not in the Confluent wire format (first byte not 0).",
        "Encode with the Avro serializer (magic byte 0 + schema id).",
        "Nội dung bản tin không theo định dạng Confluent wire format (byte đầu tiên khác 0).",
        "Mã hoá bằng bộ tuần tự hoá Avro (magic byte 0 và mã schema).",
    ),
    "truncated_header": (
        "The value is shorter than the 5-byte wire-format header.",
        "Send the full serialized value.",
        "Nội dung bản tin ngắn hơn phần đầu 5 byte của định dạng wire format.",
        "Gửi đầy đủ nội dung đã tuần tự hoá.",
    ),
    "unknown_schema_id": (
        "The schema id is neither in the catalog nor in the registry.",
        "Use a released schema id from schemas/catalog.json or the registry.",
        "Mã schema không có trong danh mục schema (catalog) và cũng không có trong registry.",
        "Dùng mã schema đã phát hành trong schemas/catalog.json hoặc trong registry.",
    ),
    "unexpected_schema": (
        "A known schema, but not one this topic carries.",
        "Publish ExaminationEvent or ExaminationBatch to this topic.",
        "Schema hợp lệ nhưng không phải loại dữ liệu mà topic này nhận.",
        "Chỉ gửi ExaminationEvent hoặc ExaminationBatch vào topic này.",
    ),
    "malformed_avro": (
        "The Avro body does not decode with the writer's schema.",
        "Serialize the record with the schema whose id is in the header.",
        "Phần nội dung Avro không giải mã được bằng schema của bên gửi.",
        "Tuần tự hoá bản ghi bằng đúng schema có mã ghi ở phần đầu bản tin.",
    ),
    "trailing_bytes": (
        "Bytes are left after the Avro record (over-long body).",
        "Send exactly one serialized record per message.",
        "Còn thừa byte sau bản ghi Avro (nội dung dài hơn bản ghi).",
        "Mỗi bản tin chỉ chứa đúng một bản ghi đã tuần tự hoá.",
    ),
    "empty_batch": (
        "A batch message contains no event.",
        "Send at least one event per batch.",
        "Bản tin gửi theo lô không chứa hồ sơ nào.",
        "Mỗi lô phải có ít nhất một hồ sơ.",
    ),
}

_VALIDATE: dict[str, _Texts] = {
    "batch_facility_mismatch": (
        "An event's MA_CSKCB differs from its batch's facility.",
        "Send each facility's events in its own batches.",
        "MA_CSKCB của một hồ sơ khác mã cơ sở KCB của lô gửi.",
        "Gửi hồ sơ của mỗi cơ sở KCB trong các lô riêng.",
    ),
    # identity
    "citizen_id_format": (
        "SO_CCCD is not 12 digits.",
        "Send the 12-digit citizen ID.",
        "SO_CCCD không gồm đúng 12 chữ số.",
        "Ghi đủ 12 chữ số CCCD (số định danh cá nhân) của người bệnh.",
    ),
    "citizen_id_province": (
        "SO_CCCD's first 3 digits are not a real province code.",
        "Check the citizen ID against the patient's card.",
        "3 chữ số đầu của SO_CCCD không phải mã tỉnh, thành phố hợp lệ.",
        "Đối chiếu số CCCD với thẻ căn cước của người bệnh.",
    ),
    "citizen_id_sex_century": (
        "SO_CCCD's 4th digit (sex and century) or 5th-6th digits (year of birth) disagree "
        "with GIOI_TINH or NGAY_SINH.",
        "Check GIOI_TINH, NGAY_SINH and the citizen ID.",
        "Chữ số thứ 4 (giới tính và thế kỷ sinh) hoặc chữ số thứ 5-6 (năm sinh) của SO_CCCD "
        "không khớp với GIOI_TINH hoặc NGAY_SINH.",
        "Kiểm tra lại GIOI_TINH, NGAY_SINH và số CCCD của người bệnh.",
    ),
    "hi_card_format": (
        "MA_THE_BHYT is not 15 characters: known beneficiary group letters, benefit level 1-5, "
        "a real province code, 10 digits.",
        "Send the HI card number as printed (several separated by ';').",
        "MA_THE_BHYT không đúng cấu trúc 15 ký tự của thẻ BHYT: mã đối tượng (chữ cái) hợp lệ, "
        "mức hưởng 1-5, mã tỉnh hợp lệ, 10 chữ số.",
        "Ghi mã thẻ BHYT đúng như in trên thẻ (nhiều thẻ thì cách nhau bằng dấu ';').",
    ),
    # facilities
    "facility_code_invalid": (
        "MA_CSKCB, MA_DKBD, MA_NOI_DI or MA_NOI_DEN is not a 5-digit facility code of a real "
        "province.",
        "Use the facility codes issued by Vietnam Social Security.",
        "MA_CSKCB, MA_DKBD, MA_NOI_DI hoặc MA_NOI_DEN không phải mã cơ sở KCB gồm 5 chữ số "
        "của một tỉnh, thành phố hợp lệ.",
        "Dùng mã cơ sở KCB do BHXH Việt Nam cấp.",
    ),
    "facility_unknown": (
        "MA_CSKCB is not in the facility registry of Ho Chi Minh City.",
        "Register the facility, or correct MA_CSKCB.",
        "MA_CSKCB không có trong danh mục cơ sở KCB của Thành phố Hồ Chí Minh.",
        "Đăng ký cơ sở KCB vào danh mục, hoặc sửa lại MA_CSKCB.",
    ),
    # clinical codes
    "icd10_main_invalid": (
        "MA_BENH_CHINH is not exactly one well-formed ICD-10 code.",
        "Send one ICD-10 code (e.g. J06.9) as the main diagnosis.",
        "MA_BENH_CHINH không phải đúng một mã ICD-10 hợp lệ.",
        "Ghi một mã ICD-10 (ví dụ J06.9) cho bệnh chính.",
    ),
    "icd10_secondary_invalid": (
        "MA_BENH_KT has a malformed ICD-10 code or more than 12 codes.",
        "Send at most 12 ICD-10 codes separated by ';'.",
        "MA_BENH_KT có mã ICD-10 sai định dạng hoặc có hơn 12 mã.",
        "Ghi tối đa 12 mã ICD-10 bệnh kèm theo, cách nhau bằng dấu ';'.",
    ),
    "code_not_in_list": (
        "GIOI_TINH, MA_LOAI_KCB, KET_QUA_DTRI, MA_LOAI_RV, MA_DOITUONG_KCB or MA_LYDO_CT is "
        "not in its code list.",
        "Use the code lists of QĐ 130/4750.",
        "GIOI_TINH, MA_LOAI_KCB, KET_QUA_DTRI, MA_LOAI_RV, MA_DOITUONG_KCB hoặc MA_LYDO_CT "
        "không có trong danh mục mã.",
        "Dùng đúng danh mục mã của QĐ 130/4750.",
    ),
    # dates
    "date_invalid": (
        "A date is not a valid yyyymmddHHMM (or yyyymmdd) value.",
        "Send dates as yyyymmddHHMM, e.g. 202401151030.",
        "Một trường ngày không đúng định dạng yyyymmddHHMM (hoặc yyyymmdd).",
        "Ghi ngày theo dạng yyyymmddHHMM, ví dụ 202401151030.",
    ),
    "date_order": (
        "Dates are out of order: birth <= admission <= discharge is required.",
        "Check NGAY_SINH, NGAY_VAO and NGAY_RA.",
        "Thứ tự ngày không hợp lệ: phải có ngày sinh <= ngày vào <= ngày ra.",
        "Kiểm tra NGAY_SINH, NGAY_VAO và NGAY_RA.",
    ),
    "date_in_future": (
        "A date lies in the future (beyond a 15-minute clock skew).",
        "Check the HIS clock and the dates.",
        "Một ngày nằm ở tương lai (sau thời điểm hiện tại hơn 15 phút, mức lệch đồng hồ cho phép).",
        "Kiểm tra đồng hồ máy chủ HIS và các trường ngày.",
    ),
    "appointment_before_discharge": (
        "NGAY_HEN_KL is not after NGAY_RA.",
        "The follow-up date must follow the discharge.",
        "NGAY_HEN_KL của giấy hẹn khám lại (XML14) không sau NGAY_RA.",
        "Ngày hẹn khám lại phải sau ngày ra viện.",
    ),
    # referral / appointment
    "referral_same_facility": (
        "The referral's destination is its origin.",
        "MA_NOI_DEN must differ from MA_NOI_DI.",
        "Giấy chuyển tuyến (XML13) có nơi chuyển đến trùng với nơi chuyển đi.",
        "MA_NOI_DEN phải khác MA_NOI_DI.",
    ),
    # money
    "money_negative": (
        "A money field is negative.",
        "Money fields are VND amounts >= 0.",
        "Một trường số tiền bị âm.",
        "Các trường số tiền là số tiền VNĐ, không nhỏ hơn 0.",
    ),
    "money_insurer_exceeds_total": (
        "T_TONGCHI_BH or T_BHTT exceeds the facility's total T_TONGCHI_BV.",
        "The insurer's amounts cannot exceed the episode's total cost.",
        "T_TONGCHI_BH hoặc T_BHTT lớn hơn tổng chi phí T_TONGCHI_BV của cơ sở KCB.",
        "Số tiền quỹ BHYT thanh toán không được vượt tổng chi phí của hồ sơ.",
    ),
    # text
    "required_field_missing": (
        "A required field is empty.",
        "Fill MA_LK, MA_BN, HO_TEN and the required XML13/XML14 fields.",
        "Một trường bắt buộc bị bỏ trống.",
        "Điền MA_LK, MA_BN, HO_TEN và các trường bắt buộc của giấy chuyển tuyến (XML13), "
        "giấy hẹn khám lại (XML14).",
    ),
    "text_too_long": (
        "A text field exceeds the standard's maximum length.",
        "Shorten the field to the length of QĐ 130/4750.",
        "Một trường chữ dài hơn độ dài tối đa theo quy định.",
        "Rút ngắn trường theo độ dài quy định tại QĐ 130/4750.",
    ),
    "text_nul_character": (
        "A text field contains the NUL character (0x00).",
        "Remove NUL characters; any other Unicode is accepted.",
        "Một trường chữ chứa ký tự NUL (0x00).",
        "Xoá ký tự NUL; mọi ký tự Unicode khác (kể cả tiếng Việt có dấu) đều được chấp nhận.",
    ),
}

_SINK: dict[str, _Texts] = {
    "db_rejected": (
        "PostgreSQL refused the record (a table constraint).",
        "Operator: inspect the dead letter; the record breaks a database rule.",
        "Cơ sở dữ liệu PostgreSQL từ chối bản ghi (vi phạm ràng buộc của bảng).",
        "Quản trị viên: xem bản ghi lỗi (dead letter); bản ghi vi phạm một quy tắc của cơ sở "
        "dữ liệu.",
    ),
    "report_invalid": (
        "A daily facility report has a malformed MA_CSKCB, a negative episode "
        "count or an implausible date.",
        "Send one report per facility and day: the 5-digit MA_CSKCB, the day, "
        "the number of episodes sent (0 on a day without data).",
        "Báo cáo hằng ngày của cơ sở KCB có MA_CSKCB sai định dạng, số hồ sơ âm hoặc ngày "
        "không hợp lý.",
        "Mỗi cơ sở KCB gửi một báo cáo mỗi ngày: MA_CSKCB 5 chữ số, ngày báo cáo, số hồ sơ "
        "đã gửi (ghi 0 nếu ngày đó không có dữ liệu).",
    ),
}

_TABLES = (("gateway", _GATEWAY), ("decode", _DECODE), ("validate", _VALIDATE), ("sink", _SINK))

#: reason code -> Reason(stage, meaning, fix, and both in Vietnamese), every stage
REASON_CODES: dict[str, Reason] = {
    code: Reason(stage, *texts) for stage, table in _TABLES for code, texts in table.items()
}
if len(REASON_CODES) != sum(len(table) for _, table in _TABLES):
    raise AssertionError("a reason code is used by two stages")

#: the codes a dead letter carries (decode, validate, sink): code -> (meaning, fix) in English
REASONS: dict[str, tuple[str, str]] = {
    code: (r.meaning, r.fix) for code, r in REASON_CODES.items() if r.stage != "gateway"
}
#: the codes the dossier gateway gives a refused file: code -> (meaning, fix) in English
GATEWAY_REASONS: dict[str, tuple[str, str]] = {
    code: (r.meaning, r.fix) for code, r in REASON_CODES.items() if r.stage == "gateway"
}


def reason_stage(code: str) -> str:
    """The stage of a reason code (a dead letter's ``stage``): gateway, decode, validate or
    sink; KeyError for an unknown code."""
    return REASON_CODES[code].stage


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def reasons_markdown() -> str:
    """docs/reference.md's reason-code table (``ehb reasons --markdown``, ``make docs``)."""
    lines = [
        "| code | stage | what it means | what the facility should fix "
        "| ý nghĩa | cách khắc phục |",
        "|---|---|---|---|---|---|",
    ]
    for code in REASONS:
        r = REASON_CODES[code]
        lines.append(
            _markdown_row([f"`{code}`", r.stage, r.meaning, r.fix, r.meaning_vi, r.fix_vi])
        )
    return "\n".join(lines) + "\n"


def gateway_reasons_markdown() -> str:
    """docs/gateway.md's table of the gateway's reason codes (``make docs``)."""
    rows = [
        "| reason | meaning | what the facility should fix | ý nghĩa | cách khắc phục |",
        "|---|---|---|---|---|",
    ]
    for code in GATEWAY_REASONS:
        r = REASON_CODES[code]
        rows.append(_markdown_row([f"`{code}`", r.meaning, r.fix, r.meaning_vi, r.fix_vi]))
    return "\n".join(rows) + "\n"
