"""``notification-service suppressions list|add|remove``: the operator's view of the suppression list.

The address is read from ``--address`` or from stdin (so it stays out of the shell history) and is never
printed: output shows the channel, a prefix of the address hash, the reason, the source and the times.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from notification_service.delivery.machine import utcnow
from shared.names import CHANNEL_EMAIL, CHANNEL_PUSH

if TYPE_CHECKING:
    from notification_service.suppressions.store import Entry

_DURATION = re.compile(r"^(\d{1,5})([dh])$")


def expiry(text: str) -> datetime:
    """``--expires``: ``30d``, ``12h``, or an ISO-8601 datetime with an offset."""
    match = _DURATION.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return utcnow() + (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected 30d, 12h or an ISO-8601 datetime with an offset") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("the datetime needs an offset (e.g. 2030-01-01T00:00:00Z)")
    return moment.astimezone(UTC)


def add_parser(sub) -> None:
    sup = sub.add_parser("suppressions", help="the suppression list (addresses and tokens never sent to)",
                         description="List, add or remove suppression list entries. Addresses are read from "
                                     "--address or stdin and never printed: entries show a hash prefix.")
    ssub = sup.add_subparsers(dest="suppressions_command", required=True, metavar="{list,add,remove}")
    lst = ssub.add_parser("list", help="list entries (channel, hash prefix, reason, source, times, state)",
                          description="List every entry, expired ones too, as tab-separated lines: channel, "
                                      "hash prefix, active/expired, source, created_at, expires_at, reason.")
    lst.add_argument("--channel", choices=[CHANNEL_EMAIL, CHANNEL_PUSH], help="only this channel's entries")
    for name, text in (("add", "add or renew an entry"), ("remove", "remove an entry")):
        cmd = ssub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}; the address is taken "
                                                           "from --address or, without it, from stdin.")
        cmd.add_argument("--channel", choices=[CHANNEL_EMAIL, CHANNEL_PUSH], default=CHANNEL_EMAIL,
                         help="email (default) or push")
        cmd.add_argument("--address", help="the e-mail address or push token (default: read from stdin)")
        if name == "add":
            cmd.add_argument("--reason", required=True, help="why (shown in list; no personal data)")
            cmd.add_argument("--expires", type=expiry, help="30d, 12h or an ISO-8601 datetime (default: never)")
        else:
            cmd.add_argument("--hash", dest="hash_prefix", help="remove by the hash prefix that list shows")


def _address(args) -> str:
    address = args.address if args.address is not None else sys.stdin.readline()
    address = address.strip()
    if not address:
        raise SystemExit("notification-service: no address given (--address or stdin)")
    return address


def _line(entry: Entry, now: datetime) -> str:
    expires = entry.expires_at.isoformat() if entry.expires_at else "never"
    state = "active" if entry.active(now) else "expired"
    return (f"{entry.channel}\t{entry.hash_prefix}\t{state}\t{entry.source}\t{entry.created_at.isoformat()}"
            f"\t{expires}\t{entry.reason}")


def cmd_suppressions(args, settings) -> int:
    from notification_service.delivery.log import delivery_log
    from notification_service.suppressions.store import Suppressions

    suppressions = Suppressions(delivery_log(settings.database_url))
    now = utcnow()
    if args.suppressions_command == "list":
        print("channel\thash\tstate\tsource\tcreated_at\texpires_at\treason")
        for entry in suppressions.entries(args.channel):
            print(_line(entry, now))
        return 0
    if args.suppressions_command == "add":
        entry = suppressions.add(args.channel, _address(args), reason=args.reason, source="operator", now=now,
                                 expires_at=args.expires)
        print(f"added\t{_line(entry, now)}")
        return 0
    if args.hash_prefix:
        if len(args.hash_prefix) < 8:
            raise SystemExit("notification-service: give at least 8 characters of the hash")
        removed = suppressions.remove(args.channel, hash_prefix=args.hash_prefix)
    else:
        removed = suppressions.remove(args.channel, address=_address(args))
    print(f"removed {removed}")
    return 0 if removed else 1
