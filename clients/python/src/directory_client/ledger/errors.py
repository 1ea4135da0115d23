"""Errors of the ledger client: one hierarchy under `LedgerError`.

`LedgerViolation` and its subclasses are definite answers of the ledger node (it refused
or failed, and said why in a typed error); the others say that no usable answer came."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any


class LedgerError(Exception):
    """Base of every error raised by the ledger client."""


class UnsupportedLedgerProtocol(LedgerError):
    """The ad's payment block names a ledger protocol this client has no adapter for."""

    def __init__(self, protocol: str, *, supported: tuple[str, ...]) -> None:
        self.protocol = protocol
        self.supported = supported
        super().__init__(
            f"no ledger adapter for protocol {protocol!r}; supported: {', '.join(supported)}"
        )


class LedgerUnavailable(LedgerError):
    """The ledger could not be asked (refused, timed out, dropped), even after retries.
    Raised only where that leaves nothing in doubt: for reads, and for changes that
    surely did not reach the ledger or that are safe to repeat (confirm, cancel)."""

    def __init__(self, message: str, *, method: str, url: str) -> None:
        self.method = method
        self.url = url
        super().__init__(message)


class UnexpectedLedgerAnswer(LedgerError):
    """The ledger answered something this client cannot read: not JSON (the reference node
    answers some PHP errors as 200 text/html), an error without a class, a wrong shape."""

    def __init__(
        self, reason: str, *, method: str, url: str, status: int, content_type: str, body: str
    ) -> None:
        self.reason = reason
        self.method = method
        self.url = url
        self.status = status
        self.content_type = content_type
        self.body_excerpt = body[:500]
        super().__init__(
            f"{method} {url} answered {status} ({content_type or 'no content type'}): {reason}; "
            f"body starts {self.body_excerpt[:200]!r}"
        )


class NoPayerWorkflow(LedgerError):
    """The node offers no active workflow in which the payer creates the transaction."""


class PaymentOutcomeUnknown(LedgerError):
    """A payment was sent but the ledger could not be asked whether it was made, or a
    search for its idempotency key could not tell (PaymentSearchInconclusive).

    Nothing may be assumed: check later with `find_payment(ad, idempotency_key, ...)`, or
    call `pay(..., idempotency_key=error.idempotency_key)` again, which finds the earlier
    attempt and finishes it instead of paying twice. `transaction_uuid` is known when the
    ledger had already answered the creation."""

    def __init__(self, message: str, *, idempotency_key: str, transaction_uuid: str | None) -> None:
        self.idempotency_key = idempotency_key
        self.transaction_uuid = transaction_uuid
        super().__init__(
            f"{message} (idempotency key {idempotency_key}"
            + (f", transaction {transaction_uuid})" if transaction_uuid else ")")
        )


class PaymentSearchInconclusive(PaymentOutcomeUnknown):
    """The payer's transactions were searched for the idempotency key, and the node
    answered as many as were asked for (`searched`) without it: the payment may be among
    those left unread, so nothing new was sent. Asking again gives the same answer until
    fewer transactions match; look for the key on the ledger itself before paying again.
    `since` is the lower bound of the search (None: the newest were read)."""

    def __init__(
        self, *, idempotency_key: str, payer: str, searched: int, since: datetime | None
    ) -> None:
        self.payer = payer
        self.searched = searched
        self.since = since
        window = (
            f"changed since {since.isoformat(timespec='seconds')}"
            if since is not None
            else "newest (the key tells no time to search from)"
        )
        super().__init__(
            f"idempotency key {idempotency_key} could not be found among the {searched} "
            f"transactions of {payer} {window} that the ledger answered, and it may hold more: "
            "whether the payment was made cannot be told, so nothing new was sent",
            idempotency_key=idempotency_key,
            transaction_uuid=None,
        )


class _KeyOfAnotherPayment(LedgerError):
    """`pay` was given the idempotency key of an earlier payment that is not this one:
    that payment is not finished as if it were, and no new one is made. `transaction` is
    the earlier payment, as the payer sees it now; `why` ends the message."""

    def __init__(self, idempotency_key: str, transaction: Any, *, why: str) -> None:
        self.idempotency_key = idempotency_key
        self.transaction = transaction
        super().__init__(
            f"idempotency key {idempotency_key} belongs to transaction {transaction.uuid}, a "
            f"payment of {transaction.quantity} to {transaction.payee} ({transaction.state}), "
            + why
        )


class IdempotencyKeyReused(_KeyOfAnotherPayment):
    """`pay` was given the idempotency key of an earlier payment of another quantity: that
    payment is not finished as if it were this one, and no new one is made."""

    def __init__(self, idempotency_key: str, transaction: Any, *, quantity: int) -> None:
        self.quantity = quantity
        super().__init__(
            idempotency_key,
            transaction,
            why=f"not to one of {quantity}; give a new key (or none) for a new payment",
        )


class PayeeChanged(_KeyOfAnotherPayment):
    """`pay` was given the idempotency key of an earlier payment to another payee than the
    ad names now: its advertiser changed their ledger account since (or the key is another
    ad's). That payment is not finished, and no new one is made: paying the ad's payee now
    could pay for the same thing twice, which only the payer and the advertiser can rule
    out. `transaction` is the earlier payment, `payee` the ad's payee now."""

    def __init__(self, idempotency_key: str, transaction: Any, *, payee: str) -> None:
        self.payee = payee
        super().__init__(
            idempotency_key,
            transaction,
            why=f"but this ad's payee is now {payee}: that payment was neither finished nor "
            f"made again to {payee}. Settle with the advertiser which account to pay (a "
            f"pending payment can be cancelled) before paying {payee} with a new key (or none)",
        )


class PaymentCancelled(_KeyOfAnotherPayment):
    """`pay` was given the idempotency key of an earlier payment that has been cancelled
    (erased) since: it paid nothing, and it is not made again, since its cancelling may
    have been meant. `transaction` is that payment; pay with a new key (or none) to pay."""

    def __init__(self, idempotency_key: str, transaction: Any) -> None:
        super().__init__(
            idempotency_key,
            transaction,
            why="and it was cancelled: nothing was paid by it, and it is not made again. "
            "Pay with a new key (or none) to pay",
        )


class PaymentNotAsAsked(LedgerError):
    """The ledger answered the creation of the payment with another transaction than the
    one asked for: its main entry of another quantity, payer or payee, or without the
    payment's idempotency key. It is left `validated`, which moves nothing."""

    def __init__(
        self, transaction: Any, *, payer: str, payee: str, quantity: int, idempotency_key: str
    ) -> None:
        self.transaction = transaction
        key = transaction.idempotency_key
        carrying = "" if key == idempotency_key else f" carrying idempotency key {key!r}"
        super().__init__(
            f"the ledger answered the payment with transaction {transaction.uuid}, a payment "
            f"of {transaction.quantity} from {transaction.payer} to {transaction.payee}"
            f"{carrying}, not the {quantity} asked from {payer} to {payee} (idempotency key "
            f"{idempotency_key}): it was left validated, which moves nothing"
        )


class FeeNotAccepted(LedgerError):
    """The ledger adds fees, paid by the payer, to the payment (entries of their own, as
    a Credit Commons node's business logic may), more than `max_fee`. The transaction,
    `transaction`, is left `validated`, which moves nothing; paying with a `max_fee` of
    `fee` or more pays it and them."""

    def __init__(self, transaction: Any, *, fee: int, max_fee: int, fees: list[Any]) -> None:
        self.transaction = transaction
        self.fee = fee
        self.max_fee = max_fee
        what = "; ".join(
            entry.description or f"{entry.quantity} to {entry.payee}" for entry in fees
        )
        super().__init__(
            f"the ledger adds {fee} in fees ({what}) to this payment of "
            f"{transaction.quantity} from {transaction.payer} to {transaction.payee}, more "
            f"than the {max_fee} accepted: nothing was paid (transaction {transaction.uuid} "
            f"was left validated, which moves nothing). Pay with a max_fee (--max-fee) of "
            f"{fee} or more to pay it with its fees"
        )


class LedgerViolation(LedgerError):
    """The node answered with a typed error (Credit Commons: a JSON object with `class`).
    The generic class for error classes this client does not know by name."""

    def __init__(
        self, *, node: str | None, violation_class: str, details: Mapping[str, Any], status: int
    ) -> None:
        self.node = node
        self.violation_class = violation_class
        self.details = dict(details)  # the node's error object, untouched
        self.status = status
        super().__init__(f"{violation_class} on node {node or '?'}: {self.describe()}")

    def describe(self) -> str:
        shown = {k: v for k, v in self.details.items() if k not in ("class", "node", "trace")}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items()) or "no details"


class CCViolation(LedgerViolation):
    """The node's general refusal, with a message only."""

    @property
    def message(self) -> str:
        return str(self.details.get("message") or "")

    def describe(self) -> str:
        return self.message or "no message"


class CCFailure(LedgerViolation):
    """The node's own failure (HTTP 500 with class CCFailure), with a message."""

    @property
    def message(self) -> str:
        return str(self.details.get("message") or "")

    def describe(self) -> str:
        return self.message or "no message"


class AuthViolation(LedgerViolation):
    """The user's key does not match the account."""

    @property
    def account(self) -> str | None:
        return self.details.get("acc_id")


class PermissionViolation(LedgerViolation):
    @property
    def account(self) -> str | None:
        return self.details.get("acc_id")


class DoesNotExistViolation(LedgerViolation):
    """An account, transaction or workflow the request named does not exist."""

    @property
    def type(self) -> str | None:
        return self.details.get("type")

    @property
    def id(self) -> str | None:
        return self.details.get("id")


class WorkflowViolation(LedgerViolation):
    """The user may not move the transaction to that state (e.g. the payer confirming)."""

    @property
    def account(self) -> str | None:
        return self.details.get("acc_id")

    @property
    def workflow(self) -> str | None:
        return self.details.get("type")

    @property
    def from_state(self) -> str | None:
        return self.details.get("from")

    @property
    def to_state(self) -> str | None:
        return self.details.get("to")


class InvalidFieldsViolation(LedgerViolation):
    @property
    def fields(self) -> dict[str, Any]:
        return dict(self.details.get("fields") or {})


class LimitViolation(LedgerViolation):
    """The transaction would take an account beyond one of its balance limits."""

    @property
    def account(self) -> str | None:
        return self.details.get("acc_id")

    @property
    def limit(self) -> int | None:
        return _int_or_none(self.details.get("limit"))

    @property
    def projected(self) -> int | None:
        """The balance the account would have had."""
        return _int_or_none(self.details.get("projected"))


class MinLimitViolation(LimitViolation):
    pass


class MaxLimitViolation(LimitViolation):
    pass


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


VIOLATION_CLASSES: dict[str, type[LedgerViolation]] = {
    cls.__name__: cls
    for cls in (
        CCViolation,
        CCFailure,
        AuthViolation,
        PermissionViolation,
        DoesNotExistViolation,
        WorkflowViolation,
        InvalidFieldsViolation,
        MinLimitViolation,
        MaxLimitViolation,
    )
}


def violation_from(error: Mapping[str, Any], *, status: int) -> LedgerViolation:
    """The typed exception for one error object of the node (it has a `class`)."""
    violation_class = str(error["class"])
    cls = VIOLATION_CLASSES.get(violation_class, LedgerViolation)
    return cls(
        node=error.get("node") or None,
        violation_class=violation_class,
        details=error,
        status=status,
    )
