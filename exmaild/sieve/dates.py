"""Date parts of the date extension (RFC 5260 §4.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute", "second", "time",
              "iso8601", "std11", "zone", "weekday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)


def parse_zone(zone: str) -> timezone | None:
    """"+0800" / "-0130" into a timezone, None if malformed."""
    z = zone.strip()
    if len(z) != 5 or z[0] not in "+-" or not z[1:].isdigit():
        return None
    h, m = int(z[1:3]), int(z[3:])
    if h > 23 or m > 59:
        return None
    delta = timedelta(hours=h, minutes=m)
    return timezone(-delta if z[0] == "-" else delta)


def parse_date(value: str) -> datetime | None:
    try:
        d = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if d is None:
        return None
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def _zone_text(d: datetime) -> str:
    off = d.utcoffset() or timedelta(0)
    mins = int(off.total_seconds() // 60)
    sign = "-" if mins < 0 else "+"
    mins = abs(mins)
    return f"{sign}{mins // 60:02d}{mins % 60:02d}"


def date_part(d: datetime, part: str) -> str:
    if part == "year":
        return f"{d.year:04d}"
    if part == "month":
        return f"{d.month:02d}"
    if part == "day":
        return f"{d.day:02d}"
    if part == "date":
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"
    if part == "julian":
        return str((d.astimezone(UTC) - _MJD_EPOCH).days)
    if part == "hour":
        return f"{d.hour:02d}"
    if part == "minute":
        return f"{d.minute:02d}"
    if part == "second":
        return f"{d.second:02d}"
    if part == "time":
        return f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
    if part == "iso8601":
        z = _zone_text(d)
        return d.strftime("%Y-%m-%dT%H:%M:%S") + f"{z[:3]}:{z[3:]}"
    if part == "std11":
        return (f"{_DAYS[d.weekday()]}, {d.day} {_MONTHS[d.month - 1]} {d.year:04d} "
                f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} {_zone_text(d)}")
    if part == "zone":
        return _zone_text(d)
    if part == "weekday":
        return str((d.weekday() + 1) % 7)  # 0 = Sunday
    raise ValueError(part)
