"""DirectoryService: every directory rule, for the CLI and the admin API alike.

Each public method takes the `Actor` asking, runs its checks and its change in
one database transaction on the store's thread pool, writes the operation log
row in that same transaction (so a refused or failed change leaves neither
change nor log line), and raises a `ServiceError` subclass when it refuses.
Enterprises are isolated by construction: every lookup of a member, domain,
department, admin or token is filtered by the caller's enterprise, and what
belongs to another enterprise is "not found".
"""

from __future__ import annotations

from exmaild.directory.admins import AdminRoles
from exmaild.directory.base import A, D, DirectoryBase, E, _now, token_hash
from exmaild.directory.departments import DepartmentAdmin
from exmaild.directory.dept_csv import DepartmentCSV
from exmaild.directory.dept_groups import DepartmentGroups
from exmaild.directory.domain_removal import DomainRemoval
from exmaild.directory.domains import DomainAdmin
from exmaild.directory.enterprises import EnterpriseAdmin
from exmaild.directory.group_csv import GroupCSV
from exmaild.directory.group_edit import GroupEdit
from exmaild.directory.group_service import GroupAdmin
from exmaild.directory.member_csv import MemberCSV
from exmaild.directory.members import MemberAdmin
from exmaild.directory.recycle import RecycleAdmin
from exmaild.directory.shared_service import SharedMailboxes
from exmaild.directory.tags import TagAdmin

__all__ = ["A", "D", "E", "DirectoryService", "_now", "token_hash"]


class DirectoryService(EnterpriseAdmin, DepartmentAdmin, MemberAdmin, MemberCSV, GroupEdit,
                       AdminRoles, SharedMailboxes, GroupAdmin, TagAdmin, DomainAdmin,
                       RecycleAdmin, DepartmentCSV, DomainRemoval, DepartmentGroups, GroupCSV,
                       DirectoryBase):
    """Every directory rule family, on one object (the families share the
    checks of DirectoryBase)."""
