"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §3) over the rows
``store.sortkeys.thread_rows`` returns (date order, keys made by the store),
and the ``* THREAD`` text of the result."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from exmaild.store.sortkeys import ThreadRow

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class Node:
    __slots__ = ("children", "parent", "row")

    def __init__(self, row: ThreadRow | None = None) -> None:
        self.row = row
        self.parent: Node | None = None
        self.children: list[Node] = []

    def key(self) -> tuple[int, int]:
        """Sort position: the message's (date, uid); a dummy's first child's."""
        if self.row is not None:
            return self.row.date, self.row.uid
        return self.children[0].key() if self.children else (0, 0)


def _adopt(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _is_ancestor(candidate: Node, node: Node | None) -> bool:
    while node is not None:
        if node is candidate:
            return True
        node = node.parent
    return False


def ordered_subject(rows: Sequence[ThreadRow]) -> list[Node]:
    """Threads of messages sharing a base subject: the earliest message is
    the parent of the others (rows come in date order)."""
    by_subject: dict[str, Node] = {}
    roots: list[Node] = []
    for row in rows:
        node = Node(row)
        root = by_subject.get(row.subject)
        if root is None:
            by_subject[row.subject] = node
            roots.append(node)
        else:
            _adopt(root, node)
    return roots


def references(rows: Sequence[ThreadRow]) -> list[Node]:
    """RFC 5256's REFERENCES algorithm, steps 1 to 6."""
    ids: dict[str, Node] = {}
    loose: list[Node] = []  # messages without a usable Message-ID of their own
    for row in sorted(rows, key=lambda r: r.uid):
        node = ids.get(row.msgid) if row.msgid else None
        if node is None or node.row is not None:
            node = Node(row)
            if row.msgid and row.msgid not in ids:
                ids[row.msgid] = node
            else:
                loose.append(node)
        else:
            node.row = row
        prev: Node | None = None
        for ref in row.refs.split():
            link = ids.get(ref)
            if link is None:
                link = ids[ref] = Node()
            if (prev is not None and link.parent is None and link is not prev
                    and not _is_ancestor(link, prev)):
                _adopt(prev, link)
            prev = link
        if prev is not None and prev is not node and not _is_ancestor(node, prev):
            _adopt(prev, node)
        elif node.parent is not None and (prev is None or prev is node):
            node.parent.children.remove(node)
            node.parent = None
    roots = [n for n in [*ids.values(), *loose] if n.parent is None]
    roots = _prune(roots, root_level=True)
    for n in roots:
        n.parent = None
    return _group_by_subject(roots)


def _descendants_first(nodes: list[Node]) -> list[Node]:
    """Every node under ``nodes``, each after all of its descendants (no
    recursion: a hostile References: chain may nest thousands deep)."""
    order: list[Node] = []
    stack = list(nodes)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    order.reverse()
    return order


def _prune(nodes: list[Node], *, root_level: bool) -> list[Node]:
    """Step 4: drop empty dummies, promote a dummy's children (at the root
    only when it has a single child)."""
    for node in _descendants_first(nodes):
        kept: list[Node] = []
        for child in node.children:
            if child.row is not None:
                kept.append(child)
            else:  # a dummy below the root: its (pruned) children move up
                kept.extend(child.children)
        node.children = kept
        for child in kept:
            child.parent = node
    out: list[Node] = []
    for node in nodes:
        if node.row is not None or (root_level and len(node.children) > 1):
            out.append(node)
        else:
            out.extend(node.children)
    return out


def _subject_of(node: Node) -> tuple[str, bool]:
    row = node.row if node.row is not None else node.children[0].row
    return (row.subject, row.reply) if row is not None else ("", False)


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """Step 5: roots whose base subjects are equal join one thread."""
    table: dict[str, Node] = {}
    for node in roots:
        subject, reply = _subject_of(node)
        if not subject:
            continue
        held = table.get(subject)
        if (held is None or (node.row is None and held.row is not None)
                or (held.row is not None and node.row is not None
                    and _subject_of(held)[1] and not reply)):
            table[subject] = node
    gone: set[int] = set()  # ids of roots now under another node
    replaced: dict[int, Node] = {}  # root id -> the dummy that took its place
    for node in roots:
        subject, reply = _subject_of(node)
        held = table.get(subject) if subject else None
        if held is None or held is node:
            continue
        gone.add(id(node))
        if held.row is None and node.row is None:
            for child in list(node.children):
                _adopt(held, child)
        elif held.row is None or (reply and not _subject_of(held)[1]):
            _adopt(held, node)
        else:
            dummy = Node()
            replaced[id(held)] = dummy
            _adopt(dummy, held)
            _adopt(dummy, node)
            table[subject] = dummy
    return [replaced.get(id(n), n) for n in roots if id(n) not in gone]


def _sort(roots: list[Node]) -> None:
    """Step 6: siblings by date, then UID; a dummy by its first child."""
    for node in _descendants_first(roots):
        node.children.sort(key=Node.key)
    roots.sort(key=Node.key)


def render(roots: list[Node], number: Callable[[int], int]) -> bytes:
    """The ``* THREAD`` line (thread-list of RFC 5256 §4)."""
    _sort(roots)
    out = [b"* THREAD"]
    if roots:
        out.append(b" ")
    work: list[Node | bytes] = []
    for root in reversed(roots):
        work += [b")", root, b"("]
    while work:
        item = work.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        node, first = item, True
        while True:  # a chain of single children: "1 2 3"
            if node.row is not None:
                out.append(b"%d" % number(node.row.uid) if first
                           else b" %d" % number(node.row.uid))
                first = False
            if len(node.children) != 1:
                break
            node = node.children[0]
        if node.children:  # branches: "(4)(5 6)"
            if not first:
                out.append(b" ")
            for child in reversed(node.children):
                work += [b")", child, b"("]
    out.append(b"\r\n")
    return b"".join(out)
