"""The console's words in Vietnamese (the default: the facilities' and the Department's
language) and English. The reason codes' meanings and fixes come from ``schemas.reasons``."""

from __future__ import annotations

from collections.abc import Callable

from schemas.reasons import REASON_CODES, Language

__all__ = ["LANGUAGES", "TEXTS", "negotiate", "reason_text", "translator"]

LANGUAGES: tuple[Language, ...] = ("vi", "en")

#: key -> (Vietnamese, English)
TEXTS: dict[str, tuple[str, str]] = {
    "title": ("Bảng điều khiển Sổ sức khỏe điện tử", "Electronic health book console"),
    "city": ("TP. Hồ Chí Minh", "Ho Chi Minh City"),
    "login": ("Đăng nhập", "Log in"),
    "logout": ("Đăng xuất", "Log out"),
    "username": ("Tên tài khoản", "Account"),
    "password": ("Mật khẩu", "Password"),
    "login_failed": ("Sai tên tài khoản hoặc mật khẩu.", "Wrong account name or password."),
    "login_throttled": (
        "Quá nhiều lần đăng nhập sai. Vui lòng thử lại sau.",
        "Too many failed logins. Try again later.",
    ),
    "csrf_refused": (
        "Biểu mẫu đã hết hạn hoặc không hợp lệ. Vui lòng tải lại trang.",
        "The form has expired or is not valid. Reload the page.",
    ),
    "not_found": ("Không tìm thấy.", "Not found."),
    "language": ("Ngôn ngữ", "Language"),
    "nav_campaign": ("Chiến dịch", "Campaign"),
    "nav_completeness": ("Báo cáo hằng ngày", "Daily reports"),
    "nav_pipeline": ("Luồng dữ liệu", "Pipeline"),
    "nav_facility": ("Cơ sở KCB", "Facility"),
    "operator": ("Sở Y tế", "Department of Health"),
    "facility": ("Cơ sở KCB", "Facility"),
    "counters": ("Số liệu chiến dịch (trực tiếp)", "Campaign counters (live)"),
    "refreshes": ("Trang tự làm mới mỗi {} giây.", "This page refreshes every {} seconds."),
    "last_commit": ("Ghi nhận gần nhất", "Last committed"),
    "examinations": ("Lượt khám chữa bệnh", "Examinations"),
    "examinations_in_province": ("trong tỉnh", "in province"),
    "examinations_out_of_province": ("ngoại tỉnh", "out of province"),
    "health_books_integrated": ("Sổ sức khỏe đã tích hợp", "Health books integrated"),
    "referrals": ("Giấy chuyển tuyến", "Referrals issued"),
    "referrals_completed": ("đã đến nơi", "completed"),
    "referrals_expired": ("quá hạn", "expired"),
    "appointments": ("Giấy hẹn khám lại", "Appointments scheduled"),
    "appointment_reminders": ("đã nhắc", "reminded"),
    "appointments_kept": ("đã tái khám", "kept"),
    "appointments_missed": ("bỏ hẹn", "missed"),
    "dead_letters": ("Hồ sơ bị từ chối", "Dead letters"),
    "by_reason": ("theo lý do", "by reason"),
    "reason": ("Lý do", "Reason"),
    "meaning": ("Ý nghĩa", "What it means"),
    "fix": ("Cách sửa", "What to fix"),
    "count": ("Số lượng", "Count"),
    "facility_days": ("Ngày báo cáo của các cơ sở", "Facility-days"),
    "status_ok": ("khớp", "ok"),
    "status_mismatch": ("lệch", "mismatch"),
    "status_silent": ("không báo cáo", "silent"),
    "status_pending": ("đang chờ", "pending"),
    "completeness": ("Tính đầy đủ của báo cáo hằng ngày", "Completeness of the daily reports"),
    "completeness_help": (
        "Mỗi cơ sở phải báo cáo mỗi ngày, kể cả ngày không có dữ liệu. "
        "Cơ sở không báo cáo được xếp trước.",
        "Every facility reports every day, days without data included. "
        "The silent facilities come first.",
    ),
    "days": ("Số ngày", "Days"),
    "show": ("Xem", "Show"),
    "silent_days": ("ngày không báo cáo", "silent days"),
    "no_reports": ("Chưa có báo cáo nào.", "No report yet."),
    "pipeline": (
        "Thông lượng và độ trễ của luồng dữ liệu",
        "Throughput and lag of the pipeline",
    ),
    "pipeline_help": (
        "Số bản ghi được ghi vào PostgreSQL theo từng khoảng thời gian, và độ trễ từ lúc cơ "
        "sở gửi đến lúc ghi (trung bình, phân vị 95).",
        "Rows committed to PostgreSQL per interval, and the lag from the facility's publish "
        "to the commit (mean, 95th percentile).",
    ),
    "hours": ("Số giờ", "Hours"),
    "interval": ("Khoảng", "Interval"),
    "persisted": ("Đã ghi", "Persisted"),
    "dead_lettered": ("Bị từ chối", "Dead-lettered"),
    "lag_mean": ("Độ trễ TB (giây)", "Mean lag (s)"),
    "lag_p95": ("Độ trễ p95 (giây)", "p95 lag (s)"),
    "rejected": ("Hồ sơ bị từ chối theo ngày và lý do", "Rejected episodes by day and reason"),
    "rejected_latest": ("Hồ sơ bị từ chối gần nhất", "Latest rejected episodes"),
    "day": ("Ngày", "Day"),
    "failed_at": ("Thời điểm", "When"),
    "superseded": ("đã được sửa", "corrected since"),
    "superseded_count": ("đã sửa", "corrected"),
    "corrections": ("Hồ sơ đã sửa hoặc đã hủy", "Episodes corrected or withdrawn"),
    "versions": ("Số phiên bản", "Versions"),
    "current_version": ("Phiên bản hiện hành", "Current version"),
    "corrected_at": ("Sửa lúc", "Corrected at"),
    "withdrawn_at": ("Hủy lúc", "Withdrawn at"),
    "reports": ("Báo cáo hằng ngày so với dữ liệu nhận được", "Daily reports against received"),
    "reported": ("Cơ sở báo cáo", "Reported"),
    "received": ("Đã nhận", "Received"),
    "status": ("Trạng thái", "Status"),
    "none": ("Không có.", "None."),
    "lookup": ("Tra cứu hồ sơ theo MA_LK", "Look up an episode by MA_LK"),
    "lookup_button": ("Tra cứu", "Look up"),
    "episode": ("Hồ sơ", "Episode"),
    "episode_not_found": (
        "Không có hồ sơ này của cơ sở.",
        "This facility has no such episode.",
    ),
    "state": ("Tình trạng", "Where it is"),
    "state_persisted": ("đã ghi vào sổ sức khỏe", "persisted in the health book"),
    "state_withdrawn": ("đã hủy (cơ sở rút hồ sơ)", "withdrawn by the facility"),
    "state_dead_lettered": ("bị từ chối, chưa sửa", "dead-lettered, not corrected yet"),
    "state_superseded": (
        "bị từ chối, đã có bản sửa được chấp nhận",
        "dead-lettered, superseded by an accepted correction",
    ),
    "state_unknown": ("không rõ", "unknown"),
    "persisted_at": ("Ghi lúc", "Persisted at"),
    "admitted": ("Ngày vào", "Admitted"),
    "discharged": ("Ngày ra", "Discharged"),
    "diagnosis": ("Bệnh chính", "Main diagnosis"),
    "patient": ("Người bệnh", "Patient"),
    "other_versions": ("Các phiên bản khác", "Other versions"),
    "version": ("Phiên bản", "Version"),
    "kind": ("Loại", "Kind"),
    "arrived_at": ("Nhận lúc", "Arrived at"),
    "episodes_persisted": ("Hồ sơ đã ghi", "Episodes persisted"),
    "open_dead_letters": ("Từ chối chưa sửa", "Rejections not corrected"),
    "facilities": ("Các cơ sở", "Facilities"),
}

_INDEX = {"vi": 0, "en": 1}


def translator(language: Language) -> Callable[[str], str]:
    index = _INDEX[language]

    def t(key: str) -> str:
        texts = TEXTS.get(key)
        return texts[index] if texts is not None else key

    return t


def reason_text(code: str, language: Language) -> tuple[str, str]:
    """(meaning, fix) of a reason code; the code itself for one this version does not know."""
    reason = REASON_CODES.get(code)
    return reason.text(language) if reason is not None else (code, "")


def negotiate(chosen: str | None, accept_language: str | None) -> Language:
    """The session's choice, else English when the browser asks for it first, else Vietnamese."""
    if chosen in _INDEX:
        return "vi" if chosen == "vi" else "en"
    first = (accept_language or "").split(",")[0].strip().lower()
    return "en" if first.startswith("en") else "vi"
