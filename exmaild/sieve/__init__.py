"""The Sieve engine (RFC 5228 and extensions): parse, check, evaluate."""

from exmaild.sieve.errors import SieveError, SieveRuntimeError
from exmaild.sieve.interp import Action, Limits, Result, Vacation, evaluate
from exmaild.sieve.message import MessageContext
from exmaild.sieve.parser import EXTENSIONS, Script, parse

__all__ = ["EXTENSIONS", "Action", "Limits", "MessageContext", "Result", "Script",
           "SieveError", "SieveRuntimeError", "Vacation", "evaluate", "parse"]
