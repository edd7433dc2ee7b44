"""SEARCHRES (RFC 5182): ``$`` names the result of the last ``SEARCH RETURN
(SAVE)`` in the selected mailbox.

The parser leaves the ``SAVED`` marker where ``$`` was written; just before a
command runs (so after any SEARCH pipelined ahead of it) the marker becomes
the saved UIDs: a UID set for UID commands and search keys, the messages'
sequence numbers for FETCH / STORE / COPY / MOVE. Messages expunged since
(announced) drop out; an empty result matches nothing.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from exmaild.searchquery import (
    SearchAnd,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchUid,
    SeqRange,
    SequenceSet,
    any_key,
)

from .commands import Command
from .sequence import SavedResult

if TYPE_CHECKING:
    from .session import Selected

NOTHING = SequenceSet((SeqRange(0, 0),))  # within no mailbox's range


def _is_saved(key: Any) -> bool:
    return isinstance(key, SearchSequence | SearchUid) and isinstance(key.sequence_set, SavedResult)


def _set(numbers: list[int]) -> SequenceSet:
    return SequenceSet.from_numbers(numbers) if numbers else NOTHING


def _replace(key: Any, uids: SequenceSet) -> Any:
    if _is_saved(key):
        return SearchUid(uids)
    if isinstance(key, SearchAnd):
        return SearchAnd(tuple(_replace(k, uids) for k in key.keys))
    if isinstance(key, SearchOr):
        return SearchOr(_replace(key.left, uids), _replace(key.right, uids))
    if isinstance(key, SearchNot):
        return SearchNot(_replace(key.key, uids))
    return key


def resolve(sel: Selected | None, cmd: Command) -> Command:
    """``cmd`` with ``$`` replaced by what it stands for now."""
    args = cmd.args
    if sel is None or args is None:
        return cmd
    seqset = getattr(args, "sequence_set", None)
    key = getattr(args, "key", None)
    in_set = isinstance(seqset, SavedResult)
    in_key = key is not None and any_key(key, _is_saved)
    if not (in_set or in_key):
        return cmd
    view = sel.view
    positions = [p for p in map(view.position, sel.saved) if p >= 0]
    uids = _set([view.uids[p] for p in positions])
    changes: dict[str, Any] = {}
    if in_set:
        changes["sequence_set"] = uids if cmd.uid else _set([p + 1 for p in positions])
    if in_key:
        changes["key"] = _replace(key, uids)
    return dataclasses.replace(cmd, args=dataclasses.replace(args, **changes))  # type: ignore[type-var]
