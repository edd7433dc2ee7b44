"""Exmail's (and WeCom's) global error codes that exmaild answers with.

Every answer is HTTP 200 with `errcode`/`errmsg`; docs/exmail-api.md lists
each code and when it is returned."""

from __future__ import annotations

OK = 0
BUSY = -1
INVALID_SECRET = 40001
INVALID_USERID = 40003
INVALID_CORPID = 40013
INVALID_TOKEN = 40014
INVALID_PARAMETER = 40058
MISSING_TOKEN = 41001
MISSING_CORPID = 41002
MISSING_SECRET = 41004
MISSING_USERID = 41009
TOKEN_EXPIRED = 42001
NOT_PERMITTED = 48002
DEPT_NAME_LENGTH = 60001
DEPT_NOT_FOUND = 60003
PARENT_NOT_FOUND = 60004
DEPT_HAS_MEMBERS = 60005
DEPT_HAS_CHILDREN = 60006
DEPT_ROOT = 60007
DEPT_EXISTS = 60008
DEPT_NAME_CHARS = 60009
DEPT_CYCLE = 60010
USERID_EXISTS = 60102
INVALID_MOBILE = 60103
USER_NOT_FOUND = 60111
INVALID_NAME = 60112
INVALID_DEPT_ID = 60123
MISSING_DEPT = 60127


class ApiError(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errmsg)
        self.errcode = errcode
        self.errmsg = errmsg
