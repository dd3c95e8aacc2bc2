"""The ledger's command-line tools: ``python -m app costs`` and ``python -m app audit-verify``.

``costs`` prints the totals of every usage row in a ledger (all the runs and
processes that wrote to it), by tenant, model version or UTC day, optionally
from a date on; ``--json`` prints ``{"total": "<decimal>", "tenants":
{"<tenant>": "<decimal>", ...}}`` (with ``--by model`` or ``--by day`` the
groups are under ``"models"`` or ``"days"``), every amount an exact decimal
string.

``audit-verify`` recomputes every audit hash chain: exit status 0 when all
are intact, 1 naming the tenant (chain) and the first row that does not match.

Both exit with status 2 for a bad option or a ledger that cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import TextIO

from collectors.ledger import ChainBreak, check_ledger_url, open_ledger, redact_url, utc_day
from collectors.records import CostRecord

__all__ = ("COMMANDS", "ledger_url_argument", "main")

#: The subcommands this module answers (the first word of ``python -m app ...``).
COMMANDS = ("costs", "audit-verify")


def ledger_url_argument(text: str) -> str:
    """The ``--ledger`` option's type (every command's): a ledger URL of a valid form.

    Raises:
        argparse.ArgumentTypeError: What :func:`collectors.ledger.check_ledger_url` refuses.
    """
    try:
        return check_ledger_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m app costs`` and ``python -m app audit-verify``."""
    parser = argparse.ArgumentParser(prog="python -m app")
    commands = parser.add_subparsers(dest="command", required=True)
    costs = commands.add_parser("costs", help="print cost totals from a ledger")
    costs.add_argument("--ledger", type=ledger_url_argument, required=True, metavar="URL",
                       help="sqlite:///PATH or postgresql://user@host:port/db")
    costs.add_argument("--by", choices=("tenant", "model", "day"), default="tenant",
                       help="group totals by tenant (default), model version or UTC day")
    costs.add_argument("--since", type=_date, metavar="DATE",
                       help="only usage on or after this UTC day (YYYY-MM-DD)")
    costs.add_argument("--json", action="store_true",
                       help='print {"total": "<decimal>", "tenants": {...}} (exact decimals)')
    verify = commands.add_parser("audit-verify", help="check every audit hash chain")
    verify.add_argument("--ledger", type=ledger_url_argument, required=True, metavar="URL",
                        help="sqlite:///PATH or postgresql://user@host:port/db")
    return parser


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Run one ledger command; returns the exit status."""
    out = sys.stdout if out is None else out
    args = build_parser().parse_args(argv)
    try:
        ledger = open_ledger(args.ledger)
    except Exception as exc:  # OSError, LedgerError, sqlite3 and psycopg errors alike
        sys.stderr.write(f"python -m app {args.command}: cannot open ledger "
                         f"{redact_url(args.ledger)}: {type(exc).__name__}: {exc}\n")
        return 2
    try:
        if args.command == "costs":
            return _costs(ledger.usage_rows(args.since), args.by, as_json=args.json, out=out)
        return _verify(*ledger.verify_audit(), out=out)
    finally:
        ledger.close()


def _costs(rows: Sequence[CostRecord], by: str, *, as_json: bool, out: TextIO) -> int:
    total = Decimal(0)
    groups: dict[str, Decimal] = {}
    calls: dict[str, int] = {}
    for row in rows:
        cost = row.cost
        key = (row.tenant_id if by == "tenant" else row.model_version if by == "model"
               else utc_day(row.time_ns).isoformat())
        total += cost
        groups[key] = groups.get(key, Decimal(0)) + cost
        calls[key] = calls.get(key, 0) + 1
    name = {"tenant": "tenants", "model": "models", "day": "days"}[by]
    if as_json:
        json.dump({"total": _exact(total),
                   name: {key: _exact(groups[key]) for key in sorted(groups)}}, out)
        out.write("\n")
        return 0
    width = max([len(by), *map(len, groups)])
    out.write(f"{by.ljust(width)}  {'calls':>8}  cost USD\n")
    for key in sorted(groups):
        out.write(f"{key.ljust(width)}  {calls[key]:>8}  {_exact(groups[key])}\n")
    out.write(f"{'total'.ljust(width)}  {sum(calls.values()):>8}  {_exact(total)}\n")
    return 0


def _verify(checked: int, broken: ChainBreak | None, *, out: TextIO) -> int:
    if broken is None:
        out.write(f"audit trail intact: {checked} rows verified\n")
        return 0
    chain = broken.chain
    tenant = f"tenant {chain!r}" if chain else "the chain of events without a tenant"
    out.write(f"audit trail BROKEN in {tenant}: row id {broken.row_id} "
              f"(position {broken.seq}): {broken.reason}\n")
    return 1


def _exact(amount: Decimal) -> str:
    """A decimal as plain digits, exactly (no exponent)."""
    return format(amount, "f")
