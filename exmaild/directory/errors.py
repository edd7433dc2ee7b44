"""Typed refusals of the directory service, each with a stable code and the
HTTP status the admin API answers it with."""

from __future__ import annotations


class ServiceError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Malformed(ServiceError):
    """The request cannot be read (bad JSON, wrong types)."""

    code, status = "malformed", 400


class Unauthorized(ServiceError):
    code, status = "unauthorized", 401


class Forbidden(ServiceError):
    """Outside the caller's role, departments or functions."""

    code, status = "forbidden", 403


class NotFound(ServiceError):
    code, status = "not_found", 404


class Conflict(ServiceError):
    """Already exists, in use, or not empty."""

    code, status = "conflict", 409


class Invalid(ServiceError):
    """Well-formed but breaks a rule (bad address, too deep, weak password, limit)."""

    code, status = "invalid", 422
