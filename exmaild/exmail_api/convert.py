"""Small conversions between Exmail's fields and the directory's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from exmaild.directory.errors import ServiceError
from exmaild.exmail_api import errors as E
from exmaild.exmail_api.errors import ApiError

ROOT = 1  # Exmail's department id of the enterprise itself


def to_int(value: Any, code: int, what: str) -> int:
    """An integer sent as a number or as decimal text."""
    if isinstance(value, bool):
        raise ApiError(code, f"invalid {what}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 19:
        return int(value)
    raise ApiError(code, f"invalid {what}")


def flag(value: Any, what: str) -> bool:
    """0/1 (number or text) as a boolean."""
    if value in (0, 1, "0", "1") and not isinstance(value, bool):
        return str(value) == "1"
    raise ApiError(E.INVALID_PARAMETER, f"{what} is 0 or 1")


def dept_in(ext: int) -> int | None:
    """Exmail's department id to the directory's (None: the root)."""
    return None if ext == ROOT else ext - 1


def dept_out(internal: int | None) -> int:
    """Department ids are the directory's plus one: 1 stays free for the root."""
    return ROOT if internal is None else internal + 1


def str_list(value: Any, what: str, limit: int | None = None) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(E.INVALID_PARAMETER, f"{what} is a list of strings")
    if limit is not None and len(value) > limit:
        raise ApiError(E.INVALID_PARAMETER, f"{what} has at most {limit} entries")
    return [v.strip().lower() for v in value if v.strip()]


def refuse(e: ServiceError, codes: dict[str, int], default: int = E.INVALID_PARAMETER
           ) -> NoReturn:
    """Re-raise a directory refusal with the Exmail code its kind maps to."""
    raise ApiError(codes.get(e.code, default), e.message) from None


async def mapped(call: Callable[[], Any], codes: dict[str, int]) -> Any:
    try:
        return await call()
    except ServiceError as e:
        refuse(e, codes)
