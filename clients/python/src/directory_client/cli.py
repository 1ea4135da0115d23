"""`directory-client`: pay for an ad on its advertiser's ledger, for members' portals and
for trying it by hand.

    export LEDGER_URL=https://ledger.example.org LEDGER_ACCOUNT=alice LEDGER_KEY=...
    directory-client pay 0192f3a4-... --quantity 5 --description "Two hours of bike repair"

The ad (GET /v1/ads/{id} on the directory) says which ledger and whom to pay; the payment
goes straight from here to that ledger. The account and key are the payer's own, on the
ledger named by LEDGER_URL: they are sent to that ledger only, never to another one an ad
names (any portal may name any ledger). Exit status: 0 done, 1 the ledger or directory
refused (or the client did: an --idempotency-key of a payment of another amount, to
another payee than the ad's now, or cancelled since), 2 bad usage, 3 the payment's outcome is unknown (run
again with the printed --idempotency-key to finish it without paying twice)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO
from urllib.parse import urlsplit

from directory_client import __version__, models
from directory_client.client import DirectoryClient
from directory_client.errors import DirectoryError, NotFound
from directory_client.ledger import (
    Balance,
    LedgerError,
    PaymentOutcomeUnknown,
    PaymentSearchInconclusive,
    Transaction,
    ledger_for,
)
from directory_client.payments import NotPayable, Payment, is_loopback, same_ledger

DEFAULT_DIRECTORY_URL = "http://127.0.0.1:8000"  # where `make run` serves the directory
LEDGER_VARIABLE = "LEDGER_URL"
ACCOUNT_VARIABLE = "LEDGER_ACCOUNT"
KEY_VARIABLE = "LEDGER_KEY"
DIRECTORY_VARIABLE = "DIRECTORY_URL"

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNKNOWN = 0, 1, 2, 3


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="directory-client",
        description="Pay for an ad found in the Commons Directory on the advertiser's ledger, "
        f"with your own account (${ACCOUNT_VARIABLE}) and key (${KEY_VARIABLE}) on that "
        f"ledger (${LEDGER_VARIABLE}).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--directory",
        default=os.environ.get(DIRECTORY_VARIABLE, DEFAULT_DIRECTORY_URL),
        help=f"the directory's base URL (${DIRECTORY_VARIABLE}, default {DEFAULT_DIRECTORY_URL})",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds per request (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    pay = commands.add_parser("pay", help="pay the advertiser of an ad")
    pay.add_argument("ad_id", help="the directory's id of the ad")
    pay.add_argument("--quantity", type=int, required=True, help="whole units of the ledger")
    pay.add_argument("--description", required=True, help="what the payment is for")
    pay.add_argument(
        "--max-fee",
        type=int,
        default=0,
        help="the most you accept to pay in fees the ledger adds on top of the quantity "
        "(default 0: a payment with fees is left unpaid, saying how much they are)",
    )
    pay.add_argument(
        "--idempotency-key",
        help="finish an earlier payment whose outcome was unknown instead of paying again",
    )

    for name, help_text in (
        ("confirm", "confirm (sign) a pending payment to you, as its payee"),
        ("cancel", "cancel (erase) a payment that is not completed"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("ad_id", help="the ad the payment was for: it names the ledger")
        command.add_argument("transaction", help="the transaction's uuid")

    balance = commands.add_parser("balance", help="your balance on an ad's ledger")
    balance.add_argument("ad_id", help="an ad of that ledger")
    return parser


def _seconds(text: str) -> float:
    """A positive, finite number of seconds; argparse names the option in its error."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return seconds


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    balance: Balance | str
    try:
        ledger_url, account, key = _credentials()
        if args.command == "pay":
            _check_directory_url_to_pay_from(args.directory)
        ad = _ad(args)
        if not same_ledger(Payment.of(ad).ledger_url, ledger_url):
            raise UsageError(
                f"ad {args.ad_id} is paid on the ledger at {Payment.of(ad).ledger_url}, and your "
                f"account and key are for {ledger_url} (${LEDGER_VARIABLE}): they are not sent "
                "to another ledger"
            )
        with ledger_for(ad, timeout_s=args.timeout) as ledger:
            if args.command == "pay":
                transaction = ledger.pay(
                    ad,
                    args.quantity,
                    args.description,
                    payer=account,
                    auth=key,
                    idempotency_key=args.idempotency_key,
                    max_fee=args.max_fee,
                )
            elif args.command == "confirm":
                transaction = ledger.confirm(args.transaction, user=account, auth=key)
            elif args.command == "cancel":
                transaction = ledger.cancel(args.transaction, user=account, auth=key)
            else:
                transaction = None
            balance = _balance_after(ledger, transaction, account=account, key=key)
    except (UsageError, NotPayable, ValueError) as error:
        # ValueError: an argument the client refused before asking anyone.
        print(f"directory-client: {error}", file=sys.stderr)
        return EXIT_USAGE
    except PaymentSearchInconclusive as error:
        # Running it again would search the same transactions: it cannot tell either.
        print(
            f"directory-client: {error}\nThe payment may or may not have been made. Look on "
            f"the ledger itself for a transaction of yours whose metadata holds idempotency "
            f"key {error.idempotency_key} before paying again.",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN
    except PaymentOutcomeUnknown as error:
        print(
            f"directory-client: {error}\nThe payment may or may not have been made. Run the "
            f"same command again with --idempotency-key {error.idempotency_key} to find and "
            "finish it without paying twice.",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN
    except (LedgerError, DirectoryError) as error:
        print(f"directory-client: {error}", file=sys.stderr)
        return EXIT_REFUSED
    _print_result(out, Payment.of(ad), transaction, balance, as_json=args.json)
    return EXIT_OK


def _balance_after(
    ledger: Any, transaction: Transaction | None, *, account: str, key: str
) -> Balance | str:
    """The payer's balance; after a payment or a move made, a balance that cannot be read
    is told (why) rather than failing the command: what was done is done, and a payer told
    "refused" might pay again."""
    if transaction is None:
        return ledger.balance(account, user=account, auth=key)
    try:
        return ledger.balance(account, user=account, auth=key)
    except LedgerError as error:
        return str(error)


def _credentials() -> tuple[str, str, str]:
    ledger_url = os.environ.get(LEDGER_VARIABLE, "").strip()
    account = os.environ.get(ACCOUNT_VARIABLE, "").strip()
    key = os.environ.get(KEY_VARIABLE, "")
    missing = [
        name
        for name, value in (
            (LEDGER_VARIABLE, ledger_url),
            (ACCOUNT_VARIABLE, account),
            (KEY_VARIABLE, key),
        )
        if not value
    ]
    if missing:
        raise UsageError(
            f"set {', '.join(missing)}: your own account and key, and the ledger they are on"
        )
    return ledger_url, account, key


def _check_directory_url_to_pay_from(directory_url: str) -> None:
    """The ad says whom the payment goes to. Read over plain http from another machine,
    anyone on the way could change its payee to an account of theirs on the payer's own
    ledger (the ledger check cannot see that): pay only from an ad read over https, or
    from this machine."""
    try:
        parts = urlsplit(directory_url)
        scheme, hostname = parts.scheme.lower(), parts.hostname or ""
    except ValueError:
        return  # the directory client names what is wrong with it
    if scheme == "http" and not is_loopback(hostname):
        raise UsageError(
            f"the directory's URL {directory_url} uses http to another machine: the ad, which "
            "says whom to pay, would be read in clear, and anyone on the way could change "
            "it; use https"
        )


def _ad(args: argparse.Namespace) -> models.PublicAd:
    try:
        with DirectoryClient(args.directory, timeout_s=args.timeout) as directory:
            ad = directory.get_ad(args.ad_id)
    except NotFound:
        raise UsageError(f"no public ad {args.ad_id} in {args.directory}") from None
    if ad.payment is None:
        raise NotPayable(
            f"ad {args.ad_id} cannot be paid here: its portal has registered no ledger or "
            "the advertiser no ledger account"
        )
    return ad


def _print_result(
    out: TextIO,
    payment: Payment,
    transaction: Transaction | None,
    balance: Balance | str,
    *,
    as_json: bool,
) -> None:
    """`balance` is the balance, or why it could not be read."""
    if as_json:
        body = {
            "ledger": {
                "protocol": payment.protocol,
                "url": payment.ledger_url,
                "node": payment.node,
            },
            "transaction": None if transaction is None else _transaction_json(transaction),
            "balance": asdict(balance) if isinstance(balance, Balance) else None,
        }
        if not isinstance(balance, Balance):
            body["balance_unavailable"] = balance
        print(json.dumps(body, indent=2, default=str), file=out)
        return
    print(f"Ledger: {payment.node} ({payment.protocol}) at {payment.ledger_url}", file=out)
    if transaction is not None:
        print(
            f"Transaction {transaction.uuid}: {transaction.payer} pays {transaction.quantity} "
            f"to {transaction.payee}, {transaction.description!r}",
            file=out,
        )
        for fee in _fees(transaction):
            print(f"Fee: {fee.quantity} to {fee.payee}, {fee.description!r}", file=out)
        next_steps = ", ".join(transaction.transitions) or "none"
        print(f"State: {transaction.state} (you may move it to: {next_steps})", file=out)
    if not isinstance(balance, Balance):
        print(f"Balance: could not be read ({balance})", file=out)
        return
    print(
        f"Balance of {balance.account}: {balance.completed.balance} completed, "
        f"{balance.pending.balance} with pending payments",
        file=out,
    )


def _transaction_json(transaction: Transaction) -> dict[str, Any]:
    return {
        "uuid": transaction.uuid,
        "state": transaction.state,
        "workflow": transaction.workflow,
        "payer": transaction.payer,
        "payee": transaction.payee,
        "quantity": transaction.quantity,
        "description": transaction.description,
        "fees": [
            {"payee": fee.payee, "quantity": fee.quantity, "description": fee.description}
            for fee in _fees(transaction)
        ],
        "transitions": list(transaction.transitions),
        "idempotency_key": transaction.idempotency_key,
    }


def _fees(transaction: Transaction) -> list[Any]:
    """The entries beside the payment's own that its payer pays: the ledger's fees."""
    return [entry for entry in transaction.entries[1:] if entry.payer == transaction.payer]


if __name__ == "__main__":
    sys.exit(main())
