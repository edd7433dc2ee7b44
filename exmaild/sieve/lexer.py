"""Sieve tokens (RFC 5228 §8.1): identifiers, tags, numbers, strings
(quoted and `text:` multi-line), and the punctuation of the grammar.

Every token carries its line and column so that errors can name them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exmaild.sieve.errors import SieveError

IDENT, TAG, NUMBER, STRING, PUNCT, EOF = "ident", "tag", "number", "string", "punct", "eof"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+([KkMmGg]?)")
_WS = re.compile(r"[ \t\r\n]+")
_MULTILINE_START = re.compile(r"text:[ \t]*(#[^\n]*)?\r?\n")
_QUANT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Numbers beyond this are refused: RFC 5228 §2.4.1 requires at least 2^31.
MAX_NUMBER = (1 << 63) - 1


@dataclass(frozen=True)
class Token:
    kind: str
    value: str | int
    line: int
    col: int


class Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0

    def _err(self, msg: str) -> SieveError:
        return SieveError(msg, self.line, self.pos - self.line_start + 1)

    def _advance(self, end: int) -> None:
        chunk = self.text[self.pos : end]
        n = chunk.count("\n")
        if n:
            self.line += n
            self.line_start = self.pos + chunk.rfind("\n") + 1
        self.pos = end

    def _skip(self) -> None:
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t\r\n":
                m = _WS.match(text, self.pos)
                assert m is not None
                self._advance(m.end())
            elif c == "#":
                nl = text.find("\n", self.pos)
                self._advance(len(text) if nl < 0 else nl + 1)
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self._err("unterminated /* comment")
                self._advance(end + 2)
            else:
                return

    def tokens(self) -> list[Token]:
        out: list[Token] = []
        text = self.text
        while True:
            self._skip()
            line, col = self.line, self.pos - self.line_start + 1
            if self.pos >= len(text):
                out.append(Token(EOF, "", line, col))
                return out
            c = text[self.pos]
            if c in "[](),;{}":
                out.append(Token(PUNCT, c, line, col))
                self._advance(self.pos + 1)
            elif c == '"':
                out.append(Token(STRING, self._quoted(), line, col))
            elif c == ":":
                m = _IDENT.match(text, self.pos + 1)
                if m is None:
                    raise self._err("':' must begin a tag such as :is")
                out.append(Token(TAG, ":" + m.group().lower(), line, col))
                self._advance(m.end())
            elif c.isdigit() and c.isascii():
                m = _NUMBER.match(text, self.pos)
                assert m is not None
                digits = m.group()[: len(m.group()) - len(m.group(1))]
                value = int(digits) * _QUANT[m.group(1).lower()]
                if value > MAX_NUMBER:
                    raise self._err("number too large")
                out.append(Token(NUMBER, value, line, col))
                self._advance(m.end())
            elif (m := _MULTILINE_START.match(text, self.pos)) is not None:
                self._advance(m.end())
                out.append(Token(STRING, self._multiline(line, col), line, col))
            elif (m := _IDENT.match(text, self.pos)) is not None:
                out.append(Token(IDENT, m.group().lower(), line, col))
                self._advance(m.end())
            else:
                raise self._err(f"unexpected character {c!r}")

    def _quoted(self) -> str:
        text = self.text
        i = self.pos + 1
        parts: list[str] = []
        while True:
            j = min((k for k in (text.find('"', i), text.find("\\", i)) if k >= 0), default=-1)
            if j < 0:
                raise self._err("unterminated string")
            parts.append(text[i:j])
            if text[j] == '"':
                self._advance(j + 1)
                return "".join(parts)
            if j + 1 >= len(text):
                raise self._err("unterminated string")
            parts.append(text[j + 1])  # \x is x (RFC 5228 §2.4.2)
            i = j + 2

    def _multiline(self, line0: int, col0: int) -> str:
        text = self.text
        lines: list[str] = []
        while True:
            nl = text.find("\n", self.pos)
            if nl < 0:
                raise SieveError("multi-line string without the closing '.' line", line0, col0)
            line = text[self.pos : nl + 1]
            self._advance(nl + 1)
            if line.rstrip("\r\n") == ".":
                return "".join(lines)
            lines.append(line[1:] if line.startswith("..") else line)
