"""Who asks: the CLI (full rights, any enterprise) or an admin API caller."""

from __future__ import annotations

from dataclasses import dataclass

# What a graded admin can be granted (manual §4.5.3). Creator and super
# admins (and enterprise API tokens) have all of them plus "admins".
FUNCTIONS = ("members", "departments", "domains", "log")
ROLES = ("creator", "super", "graded")


@dataclass(frozen=True)
class Actor:
    name: str  # who, for the operation log: "cli", an admin's address, "token:NAME"
    ip: str = ""
    # None: the command line, which may act in any enterprise.
    enterprise_id: int | None = None
    role: str = "system"  # system | creator | super | graded | token | member
    departments: frozenset[int] = frozenset()  # a graded admin's departments (roots)
    functions: frozenset[str] = frozenset()
    token_id: int | None = None
    account_id: int | None = None  # a member's own session (/api/v1/me)

    @property
    def member(self) -> bool:
        """A member acting on itself only (self-service), never an admin."""
        return self.role == "member"

    @property
    def graded(self) -> bool:
        return self.role == "graded"

    @property
    def full(self) -> bool:
        """All rights within its enterprise."""
        return self.role in ("system", "creator", "super", "token")


CLI = Actor("cli", ip="local")
