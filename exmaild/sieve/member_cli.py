"""`exmailctl user set ADDRESS --forward-outside yes|no|default`: a member's
rule-engine policy (manual §4.4.2.4), through the same service as the admin API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

_CHOICES = {"yes": True, "no": False, "default": None}


async def _user_set(store: Any, a: argparse.Namespace) -> int:
    from exmaild.auth.cli import user_set as login_settings
    from exmaild.cli import _actor, _svc
    from exmaild.sieve.forwarding import MemberForwarding

    if a.forward_outside is None:  # the login settings alone (or "nothing to set")
        return await login_settings(store, a)
    if a.secure_login is not None:
        rc = await login_settings(store, a)
        if rc:
            return rc
    got = await MemberForwarding(_svc(store)).set(_actor(), a.address,
                                                  _CHOICES[a.forward_outside])
    own = got["forward_outside"]
    sys.stdout.write(f"{got['address']}: forward outside "
                     f"{'the enterprise setting' if own is None else 'yes' if own else 'no'}"
                     f" (now {'allowed' if got['effective'] else 'forbidden'})\n")
    # Delivery caches nothing of this: the next redirect reads it.
    return 0


def add_parsers(usr: Any, command: Callable[[str, str], Any]) -> None:
    """Adds to `user set` (made by exmaild/auth/cli.py for --secure-login)."""
    st = usr.choices["set"]
    st.add_argument("--forward-outside", choices=tuple(_CHOICES),
                    help="may the member's rules forward outside the enterprise's domains "
                         "(default: the enterprise setting)")
    command("user", "set")(_user_set)
