"""What every ledger adapter offers (`Ledger`) and the values it returns.

Kept apart from the adapters so that they and the factory in `__init__` import it
without a cycle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, Self

import httpx

from directory_client.payments import Payment

# Metadata key carrying the client-side identity of a payment (see Ledger.pay).
IDEMPOTENCY_METADATA_KEY = "idempotency_key"


@dataclass(frozen=True)
class Entry:
    """One flow of units between two accounts; a transaction's first entry is its main one."""

    payer: str
    payee: str
    quantity: int
    description: str
    author: str | None
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Transaction:
    uuid: str
    state: str  # validated, pending, completed, erased
    workflow: str  # the workflow id, Credit Commons' `type`
    version: int
    entries: tuple[Entry, ...]
    # The states the user who asked may move it to now (empty when nothing is left to do).
    transitions: tuple[str, ...]
    updated: datetime | None  # as the node wrote it; naive when the node gives no zone

    @property
    def payer(self) -> str:
        return self.entries[0].payer

    @property
    def payee(self) -> str:
        return self.entries[0].payee

    @property
    def quantity(self) -> int:
        return self.entries[0].quantity

    @property
    def description(self) -> str:
        return self.entries[0].description

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.entries[0].metadata

    @property
    def idempotency_key(self) -> str | None:
        return self.metadata.get(IDEMPOTENCY_METADATA_KEY)


@dataclass(frozen=True)
class AccountActivity:
    balance: int
    trades: int
    volume: int
    gross_in: int
    gross_out: int
    partners: int


@dataclass(frozen=True)
class Balance:
    account: str
    completed: AccountActivity  # completed transactions only
    pending: AccountActivity  # completed and pending together, as the node counts them


@dataclass(frozen=True)
class StatementEntry:
    """One entry of a transaction, seen from the account the statement is for."""

    transaction_uuid: str
    state: str
    workflow: str
    updated: datetime | None
    payer: str
    payee: str
    partner: str  # the other account of the entry
    quantity: int  # always positive
    amount: int  # signed from the account's side: positive received, negative paid
    description: str
    metadata: Mapping[str, Any]


class Ledger(Protocol):
    """The basic methods a remote accounting service needs, on the advertiser's ledger.
    Every call authenticates as the given user with that user's own key; the directory
    never moves value. Quantities are whole numbers of the ledger's own units."""

    def pay(
        self,
        ad: Any,
        quantity: int,
        description: str,
        *,
        payer: str,
        auth: str,
        idempotency_key: str | None = None,
        max_fee: int = 0,
    ) -> Transaction: ...

    def find_payment(
        self, ad: Any, idempotency_key: str, *, payer: str, auth: str
    ) -> Transaction | None: ...

    def transaction(self, transaction_uuid: str, *, user: str, auth: str) -> Transaction: ...

    def confirm(self, transaction_uuid: str, *, user: str, auth: str) -> Transaction: ...

    def cancel(self, transaction_uuid: str, *, user: str, auth: str) -> Transaction: ...

    def balance(self, account: str, *, user: str, auth: str) -> Balance: ...

    def statement(
        self, account: str, *, user: str, auth: str, since: datetime | None = None
    ) -> list[StatementEntry]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...


class LedgerAdapter(Protocol):
    """A ledger protocol's implementation, as registered in LEDGER_ADAPTERS."""

    @classmethod
    def from_payment(
        cls,
        payment: Payment,
        *,
        timeout_s: float,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> Ledger: ...
