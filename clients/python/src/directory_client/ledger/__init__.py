"""Paying an ad on the advertiser's ledger, directly, with the payer's own credentials.

    with ledger_for(ad) as ledger:
        transaction = ledger.pay(ad, 3, "two hours of bike repair", payer="alice", auth=key)

`ledger_for` picks the adapter from the ad's `payment.protocol`; another ledger protocol
is added by writing an adapter (see `LedgerAdapter`) and registering it in LEDGER_ADAPTERS."""

from __future__ import annotations

from typing import Any

import httpx

from directory_client.ledger.credit_commons import DEFAULT_TIMEOUT_S, CreditCommonsLedger
from directory_client.ledger.errors import (
    AuthViolation,
    CCFailure,
    CCViolation,
    DoesNotExistViolation,
    FeeNotAccepted,
    IdempotencyKeyReused,
    InvalidFieldsViolation,
    LedgerError,
    LedgerUnavailable,
    LedgerViolation,
    LimitViolation,
    MaxLimitViolation,
    MinLimitViolation,
    NoPayerWorkflow,
    PayeeChanged,
    PaymentCancelled,
    PaymentNotAsAsked,
    PaymentOutcomeUnknown,
    PaymentSearchInconclusive,
    PermissionViolation,
    UnexpectedLedgerAnswer,
    UnsupportedLedgerProtocol,
    WorkflowViolation,
)
from directory_client.ledger.interface import (
    IDEMPOTENCY_METADATA_KEY,
    AccountActivity,
    Balance,
    Entry,
    Ledger,
    LedgerAdapter,
    StatementEntry,
    Transaction,
)
from directory_client.payments import NotPayable, Payment, same_ledger

# payment.protocol -> the adapter that speaks it
LEDGER_ADAPTERS: dict[str, type[LedgerAdapter]] = {
    "credit-commons": CreditCommonsLedger,
}


def ledger_for(
    ad_or_payment: Any,
    *,
    credentials_for: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
    **options: Any,
) -> Ledger:
    """The ledger an ad is paid on. `ad_or_payment` is a Payment, an object with a
    `payment` attribute or the ad's JSON; `options` go to the adapter (Credit Commons:
    api_version, read_attempts, retry_backoff_s). Raises UnsupportedLedgerProtocol.

    `credentials_for`: the URL of the ledger whose account and key the caller will use.
    Any portal may name any ledger, and one naming its own would collect the keys of
    whoever paid its ads: an ad paid on another ledger than this one (same_ledger) is
    NotPayable, before anything is sent. Without it, the caller makes that check."""
    payment = Payment.of(ad_or_payment)
    if credentials_for is not None and not same_ledger(payment.ledger_url, credentials_for):
        raise NotPayable(
            f"this ad is paid on the ledger at {payment.ledger_url}, and the credentials are "
            f"for {credentials_for}: they are not sent to another ledger"
        )
    adapter = LEDGER_ADAPTERS.get(payment.protocol)
    if adapter is None:
        raise UnsupportedLedgerProtocol(payment.protocol, supported=tuple(sorted(LEDGER_ADAPTERS)))
    return adapter.from_payment(payment, timeout_s=timeout_s, transport=transport, **options)


__all__ = [
    "IDEMPOTENCY_METADATA_KEY",
    "LEDGER_ADAPTERS",
    "AccountActivity",
    "AuthViolation",
    "Balance",
    "CCFailure",
    "CCViolation",
    "CreditCommonsLedger",
    "DoesNotExistViolation",
    "Entry",
    "FeeNotAccepted",
    "IdempotencyKeyReused",
    "InvalidFieldsViolation",
    "Ledger",
    "LedgerAdapter",
    "LedgerError",
    "LedgerUnavailable",
    "LedgerViolation",
    "LimitViolation",
    "MaxLimitViolation",
    "MinLimitViolation",
    "NoPayerWorkflow",
    "PayeeChanged",
    "PaymentCancelled",
    "PaymentNotAsAsked",
    "PaymentOutcomeUnknown",
    "PaymentSearchInconclusive",
    "PermissionViolation",
    "StatementEntry",
    "Transaction",
    "UnexpectedLedgerAnswer",
    "UnsupportedLedgerProtocol",
    "WorkflowViolation",
    "ledger_for",
]
