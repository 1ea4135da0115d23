"""Credit Commons adapter: pays on the advertiser's Credit Commons node with the payer's
own credentials (headers `cc-user` / `cc-auth`).

Two versions of the API are spoken, each with its own path table:
- 0.2, the reference node (cc-node 2022): bare JSON bodies, errors as `{"class": ...}`;
- 0.8: bodies wrapped in `{"data": ..., "meta": {...}}`, errors in `{"errors": [...]}`.
The version is the `api_version` given to the constructor; when none is given it is
detected once, from the answer to `GET /workflows` (a path both versions share, and the
first call this client makes): wrapped in data/meta means 0.8, bare means 0.2. Error
objects (`errors`) are read in either version.

A payment never happens twice. The node makes the transaction's uuid itself (it ignores
a uuid in the POST body), so each payment carries a client-made idempotency key in its
`metadata`. The creating POST is never blindly repeated: when its answer is lost, the
payer's transactions are searched for the key first, and so they are when `pay` is given
a key to resume. The creation only writes a `validated` transaction, which moves no value
and which nobody but its author sees; value moves when it is PATCHed on to `pending`, and
that is done for one transaction only, whose state is read back whenever the PATCH's
answer is lost.

The search reads the payer's transactions to any payee (the ad's payee may have changed
since; a payment found to another payee is refused, PayeeChanged, not finished). Nodes
answer a bounded page, so a search that fills its page without finding the key cannot say
"not made": it raises PaymentSearchInconclusive rather than paying. A key this client
makes is a UUIDv7, which tells when it was made: its search reads only the transactions
changed since shortly before, oldest first, so payments made after it do not push it out
of the page; when it finds none moved on there, the newest are read too, for a key whose
maker's clock ran ahead of the node's by more than the margin. Any other key (older
clients made uuid4 keys) is searched for among the payer's newest transactions."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import httpx

from directory_client.ledger.errors import (
    CCFailure,
    CCViolation,
    FeeNotAccepted,
    IdempotencyKeyReused,
    LedgerUnavailable,
    NoPayerWorkflow,
    PayeeChanged,
    PaymentCancelled,
    PaymentNotAsAsked,
    PaymentOutcomeUnknown,
    PaymentSearchInconclusive,
    UnexpectedLedgerAnswer,
    WorkflowViolation,
    violation_from,
)
from directory_client.ledger.interface import (
    IDEMPOTENCY_METADATA_KEY,
    AccountActivity,
    Balance,
    Entry,
    StatementEntry,
    Transaction,
)
from directory_client.payments import NotPayable, Payment
from directory_client.transport import default_transport, require_timeout, send_within

PROTOCOL = "credit-commons"
DEFAULT_TIMEOUT_S = 10.0
# Reads (GET) and never-sent requests are tried this often, waiting RETRY_BACKOFF_S,
# then twice that, and so on, between tries.
READ_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.2
# How many of the payer's transactions one search for an idempotency key reads. It is
# always given: a node may cut a list short unless told how long (0.8 answers 10). A page
# this full without the key cannot tell that the payment was not made. Paging on with the
# node's before/after is no way round it: they compare to the second, so a page boundary
# inside one second would skip or repeat transactions.
KEY_SEARCH_LIMIT = 1000
# A UUIDv7 key bounds its search from below: transactions changed before the key was made,
# less this margin, are not read. The key's time is its maker's clock, the node's the
# node's, in a zone it need not say (the reference node keeps local wall-clock times).
# Even a node that read our UTC bound as its own local time would be off by 14 hours at
# most (zones run from UTC-12 to UTC+14), so a day still leaves ten hours for the two
# clocks to disagree. It costs a day more of the payer's transactions read.
KEY_TIME_MARGIN = timedelta(days=1)

VALIDATED = "validated"
COMPLETED = "completed"
ERASED = "erased"
# The states of a transaction that its creator has moved on from `validated`.
MOVED_ON_STATES = "pending,completed,erased"
# The states a statement lists: those that count in a balance.
STATEMENT_STATES = "pending,completed"
# How many transactions a statement reads unless told: the ones changed last.
STATEMENT_LIMIT = 1000


@dataclass(frozen=True)
class PathTable:
    """Where each operation lives in one version of the API. Placeholders are filled
    with URL-quoted values."""

    version: str
    workflows: str
    create: str
    transaction: str  # {uuid}
    transition: str  # {uuid}, {state}
    transactions: str  # filtered with query parameters
    account_summary: str  # {account}


PATH_TABLES = {
    table.version: table
    for table in (
        PathTable(
            version="0.2",
            workflows="/workflows",
            create="/transaction",
            # The node's openapi.yml says /transaction/{uuid}/{format}; the node serves this.
            transaction="/transaction/full/{uuid}",
            transition="/transaction/{uuid}/{state}",
            transactions="/transaction/full",
            account_summary="/account/summary/{account}",
        ),
        PathTable(
            version="0.8",
            workflows="/workflows",
            create="/transaction",
            transaction="/transaction/{uuid}",
            transition="/transaction/{uuid}/{state}",
            transactions="/transactions",
            account_summary="/account/summary?acc_path={account}",
        ),
    )
}

ENVELOPE_KEYS = {"data", "meta", "links"}
# The reference node appends PHP warnings as HTML after a JSON body it has written.
PHP_NOTICE_MARKERS = ("<b>Warning</b>", "<b>Notice</b>", "<b>Deprecated</b>")


@dataclass(frozen=True)
class Workflow:
    id: str
    active: bool
    created_by: tuple[str, ...]  # relations allowed to create: payer, payee, <admin>
    creation_state: str  # the state a confirmed creation is written in


class CreditCommonsLedger:
    """A Credit Commons node at `ledger_url`. Use as a context manager, or close()."""

    def __init__(
        self,
        ledger_url: str,
        *,
        node: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        api_version: str | None = None,
        transport: httpx.BaseTransport | None = None,
        read_attempts: int = READ_ATTEMPTS,
        retry_backoff_s: float = RETRY_BACKOFF_S,
    ) -> None:
        if api_version is not None and api_version not in PATH_TABLES:
            raise ValueError(
                f"api_version must be one of {', '.join(PATH_TABLES)} or None (detect), "
                f"got {api_version!r}"
            )
        require_timeout(timeout_s)
        if read_attempts < 1:
            raise ValueError(f"read_attempts must be at least 1, got {read_attempts}")
        self.ledger_url = ledger_url.rstrip("/")
        self.node = node
        self._paths = PATH_TABLES[api_version] if api_version else None
        self._workflows: list[Workflow] | None = None
        self._read_attempts = read_attempts
        self._retry_backoff_s = retry_backoff_s
        self._timeout_s = float(timeout_s)
        self._http = httpx.Client(
            base_url=self.ledger_url,
            timeout=httpx.Timeout(timeout_s),
            transport=default_transport() if transport is None else transport,
            headers={"accept": "application/json"},
        )

    @classmethod
    def from_payment(
        cls,
        payment: Payment,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> Self:
        return cls(
            payment.ledger_url,
            node=payment.node,
            timeout_s=timeout_s,
            transport=transport,
            **options,
        )

    @property
    def api_version(self) -> str | None:
        """The API version spoken; None until detected."""
        return self._paths.version if self._paths else None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # The Ledger methods

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
    ) -> Transaction:
        """Pay `quantity` units to the ad's payee, as `payer`: create the transaction in
        the workflow where the payer credits the payee and move it on to the state the
        node offers next (pending: the payee then confirms). Returns it as the payer now
        sees it.

        The transaction is moved on only when the node made it as asked (else
        PaymentNotAsAsked), and when the fees it adds, in entries of their own paid by
        the payer, come to `max_fee` at most (else FeeNotAccepted): until then it is
        `validated`, which moves nothing.

        Give `idempotency_key` to resume a payment whose outcome was unknown: an earlier
        transaction with that key is finished instead of a new one being made (one to
        another payee than the ad's now raises PayeeChanged, one of another quantity
        IdempotencyKeyReused, one cancelled since PaymentCancelled; a search that cannot
        tell raises PaymentSearchInconclusive).
        A want is not paid: its advertiser is the one who pays (NotPayable)."""
        payment = self._payment_on_this_ledger(ad)
        _check_not_a_want(ad)
        _check_positive_quantity(quantity)
        _check_text("description", description)
        _check_credentials(payer, auth, user_role="payer")
        if idempotency_key is not None:
            _check_text("idempotency_key", idempotency_key)
        if type(max_fee) is not int or max_fee < 0:
            raise ValueError(f"max_fee must be a whole number of units, 0 or more, got {max_fee!r}")
        workflow = self.payer_workflow(user=payer, auth=auth)
        key = idempotency_key or _new_idempotency_key()
        found = None
        if idempotency_key is not None:
            found = self._find_or_unknown(key, payer=payer, auth=auth)
        if found is not None and found.payee != payment.payee:
            # Finishing it would pay the old account; a new one might pay for it twice.
            raise PayeeChanged(key, found, payee=payment.payee)
        if found is not None and found.quantity != quantity:
            # Finishing it would answer a payment of another amount as if it were this one.
            raise IdempotencyKeyReused(key, found, quantity=quantity)
        if found is not None and found.state == ERASED:
            # Returned as it stands, it would read as done; made again, it would undo a
            # cancellation that may have been meant.
            raise PaymentCancelled(key, found)
        transaction = found or self._create(
            {
                "payer": payer,
                "payee": payment.payee,
                "quant": quantity,
                "description": description,
                "type": workflow.id,
                "metadata": {IDEMPOTENCY_METADATA_KEY: key},
            },
            key=key,
            auth=auth,
        )
        if transaction.state == VALIDATED:
            _check_as_asked(
                transaction,
                payer=payer,
                payee=payment.payee,
                quantity=quantity,
                key=key,
                max_fee=max_fee,
            )
            self._move_validated_on(transaction, workflow, key=key, user=payer, auth=auth)
        try:
            return self.transaction(transaction.uuid, user=payer, auth=auth)
        except (LedgerUnavailable, UnexpectedLedgerAnswer) as error:
            raise PaymentOutcomeUnknown(
                f"the payment was moved on but could not be read back: {error}",
                idempotency_key=key,
                transaction_uuid=transaction.uuid,
            ) from error

    def find_payment(
        self, ad: Any, idempotency_key: str, *, payer: str, auth: str
    ) -> Transaction | None:
        """The payer's transaction that carries this idempotency key, in whatever state,
        or None. Its payee is the one it was made to, which may no longer be the ad's.
        When there are several (only one of them can have left `validated`), the one
        furthest on. Raises PaymentSearchInconclusive when the search cannot tell."""
        self._payment_on_this_ledger(ad)
        _check_text("idempotency_key", idempotency_key)
        _check_credentials(payer, auth, user_role="payer")
        return self._find_by_key(idempotency_key, payer=payer, auth=auth)

    def transaction(self, transaction_uuid: str, *, user: str, auth: str) -> Transaction:
        """One transaction, with the transitions `user` may make on it now."""
        transaction_uuid = _checked_uuid(transaction_uuid)
        _check_credentials(user, auth)
        paths = self._paths_for(user=user, auth=auth)
        path = _fill(paths.transaction, uuid=transaction_uuid)
        data = self._read(path, user=user, auth=auth)
        return self._transaction_from(data, method="GET", path=path)

    def confirm(self, transaction_uuid: str, *, user: str, auth: str) -> Transaction:
        """Sign a pending transaction as its payee: pending -> completed. Repeating it is
        harmless: a transaction already completed counts as confirmed."""
        return self._move(transaction_uuid, COMPLETED, user=user, auth=auth)

    def cancel(self, transaction_uuid: str, *, user: str, auth: str) -> Transaction:
        """Erase a transaction (the payer may, while it is pending). Repeating it is
        harmless: a transaction already erased counts as cancelled."""
        return self._move(transaction_uuid, ERASED, user=user, auth=auth)

    def balance(self, account: str, *, user: str, auth: str) -> Balance:
        _check_account(account)
        _check_credentials(user, auth)
        paths = self._paths_for(user=user, auth=auth)
        path = _fill(paths.account_summary, account=account)
        data = self._read(path, user=user, auth=auth)
        try:
            return Balance(
                account=account,
                completed=_activity_from(data["completed"]),
                pending=_activity_from(data["pending"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise self._bad_shape(
                "GET", path, data, f"not an account summary ({error!r})"
            ) from error

    def statement(
        self,
        account: str,
        *,
        user: str,
        auth: str,
        since: datetime | None = None,
        limit: int = STATEMENT_LIMIT,
    ) -> list[StatementEntry]:
        """The entries of the account's pending and completed transactions, oldest first
        by their last change; with `since` (timezone-aware), only transactions changed
        after it (the node filters on the time of the last change, to the second).

        At most the `limit` transactions changed last are read: the node is always told
        how many, since a node may otherwise cut the list short (0.8 answers 10)."""
        _check_account(account)
        _check_credentials(user, auth)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, not {limit!r}")
        if since is not None and (since.tzinfo is None or since.utcoffset() is None):
            raise ValueError(
                "since must be a timezone-aware datetime (the node's clock zone is unknown)"
            )
        paths = self._paths_for(user=user, auth=auth)
        params = {
            "involving": account,
            "states": STATEMENT_STATES,
            "sort": "updated,desc",
            "limit": str(limit),
        }
        if since is not None:
            params["after"] = since.isoformat(timespec="seconds")
        data = self._read(paths.transactions, user=user, auth=auth, params=params)
        transactions = self._transactions_from(data, path=paths.transactions)
        lines = [
            _statement_entry(transaction, entry, account)
            for transaction in transactions
            for entry in transaction.entries
            if account in (entry.payer, entry.payee)
        ]
        # sorted() is stable: entries of one transaction keep their order.
        return sorted(lines, key=lambda line: line.updated or datetime.min)

    def payer_workflow(self, *, user: str, auth: str) -> Workflow:
        """The active workflow in which the payer creates the transaction, read from the
        node's GET /workflows (the reference node calls it `credit`; others may not)."""
        for workflow in self._load_workflows(user=user, auth=auth):
            if workflow.active and workflow.created_by == ("payer",):
                return workflow
        raise NoPayerWorkflow(f"{self.ledger_url} offers no active workflow created by the payer")

    # Paying, step by step

    def _create(self, body: dict[str, Any], *, key: str, auth: str) -> Transaction:
        """POST the new transaction. The POST is repeated only when it surely never
        reached the node, or when the node was asked and has no transaction with `key`."""
        paths = self._paths_for(user=body["payer"], auth=auth)
        payer = body["payer"]
        for attempt in range(self._read_attempts):
            try:
                response = self._send("POST", paths.create, user=payer, auth=auth, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
                # The connection was never made: nothing was sent.
                if attempt + 1 == self._read_attempts:
                    raise LedgerUnavailable(
                        f"could not connect to {self.ledger_url}: {error!r}; nothing was paid",
                        method="POST",
                        url=self._url(paths.create),
                    ) from error
                self._back_off(attempt)
                continue
            except httpx.TransportError:
                # Sent, but the answer was lost: the node may have made it.
                found = self._find_or_unknown(key, payer=payer, auth=auth)
                if found is not None:
                    return found
                self._back_off(attempt)
                continue
            try:
                data = self._answer(response)
            except UnexpectedLedgerAnswer:
                # A crash report may follow a write: look before giving up.
                found = self._find_or_unknown(key, payer=payer, auth=auth)
                if found is not None:
                    return found
                raise
            return self._transaction_from(data, method="POST", path=paths.create)
        raise PaymentOutcomeUnknown(
            f"the ledger at {self.ledger_url} kept losing its answers to the payment",
            idempotency_key=key,
            transaction_uuid=None,
        )

    def _move_validated_on(
        self, transaction: Transaction, workflow: Workflow, *, key: str, user: str, auth: str
    ) -> None:
        # The workflow's creation state, and only if the node offers it: the reference node
        # would also let the creator jump to `completed`, skipping the payee (a known bug).
        target = workflow.creation_state
        if target not in transaction.transitions:
            raise NoPayerWorkflow(
                f"the node offers {list(transaction.transitions)} for transaction "
                f"{transaction.uuid}, not the {workflow.id} workflow's {target!r}"
            )
        try:
            # The payee may confirm it between our PATCH and reading it back: completed
            # is only reached through the creation state, so it was moved on too.
            self._transition(
                transaction.uuid, target, user=user, auth=auth, reached={target, COMPLETED}
            )
        except (LedgerUnavailable, UnexpectedLedgerAnswer) as error:
            raise PaymentOutcomeUnknown(
                f"the payment was created but whether it moved on to {target} is unknown: {error}",
                idempotency_key=key,
                transaction_uuid=transaction.uuid,
            ) from error

    def _find_or_unknown(self, key: str, *, payer: str, auth: str) -> Transaction | None:
        try:
            return self._find_by_key(key, payer=payer, auth=auth)
        except (LedgerUnavailable, UnexpectedLedgerAnswer) as error:
            raise PaymentOutcomeUnknown(
                f"the ledger at {self.ledger_url} could not be asked whether the payment was made: {error}",
                idempotency_key=key,
                transaction_uuid=None,
            ) from error

    def _find_by_key(self, key: str, *, payer: str, auth: str) -> Transaction | None:
        """The payer's transaction carrying `key`, to whichever payee, furthest on; None
        when the node surely has none. PaymentSearchInconclusive when a page came back
        full and what it left unread might hold the answer."""
        since = _search_start(key)
        params = {"payer": payer, "limit": str(KEY_SEARCH_LIMIT)}
        if since is None:
            # Newest first: a lost answer is looked for at once.
            params["sort"] = "created,desc"
        else:
            # From just before the key was made on: the payments made after it, however
            # many, cannot push it out of the page. `after` is compared to the second.
            params |= {"after": since.isoformat(timespec="seconds"), "sort": "created,asc"}
        found, full = self._search_for_key(key, payer=payer, auth=auth, params=params)
        if since is not None and all(t.state == VALIDATED for t in found):
            # The key's time is its maker's clock: one more than KEY_TIME_MARGIN ahead of
            # the node's (a device's date or zone set wrong) puts the payment before
            # `since`. Not found there, it is looked for among the newest too, rather than
            # made again. What these pages leave unread changes nothing of the answer.
            newest = {"payer": payer, "limit": str(KEY_SEARCH_LIMIT), "sort": "created,desc"}
            found += self._search_for_key(key, payer=payer, auth=auth, params=newest)[0]
        progress = {VALIDATED: 0, ERASED: 1}  # anything else has gone further on
        best = max(found, key=lambda t: progress.get(t.state, 2), default=None)
        # One found beyond `validated` settles it: only one of them is ever moved on. Short
        # of that, one moved on may be among the transactions a full page left unread.
        if (best is None or best.state == VALIDATED) and (
            full[MOVED_ON_STATES] or (best is None and full[VALIDATED])
        ):
            raise PaymentSearchInconclusive(
                idempotency_key=key, payer=payer, searched=KEY_SEARCH_LIMIT, since=since
            )
        return best

    def _search_for_key(
        self, key: str, *, payer: str, auth: str, params: Mapping[str, str]
    ) -> tuple[list[Transaction], dict[str, bool]]:
        """The payer's transactions carrying `key` among those `params` select, and for
        each search whether its page came back full."""
        paths = self._paths_for(user=payer, auth=auth)
        found: list[Transaction] = []
        full: dict[str, bool] = {}
        # Two searches: the reference node shows `validated` transactions to their author
        # only, and a `states` list holding `validated` returns nothing else.
        for states in (VALIDATED, MOVED_ON_STATES):
            data = self._read(
                paths.transactions, user=payer, auth=auth, params={**params, "states": states}
            )
            transactions = self._transactions_from(data, path=paths.transactions)
            found += [t for t in transactions if t.idempotency_key == key and t.payer == payer]
            full[states] = _fills_page(transactions, payer=payer)
        return found, full

    # State changes

    def _move(self, transaction_uuid: str, target: str, *, user: str, auth: str) -> Transaction:
        transaction_uuid = _checked_uuid(transaction_uuid)
        _check_credentials(user, auth)
        self._transition(transaction_uuid, target, user=user, auth=auth)
        return self.transaction(transaction_uuid, user=user, auth=auth)

    def _transition(
        self,
        transaction_uuid: str,
        target: str,
        *,
        user: str,
        auth: str,
        reached: set[str] | None = None,
    ) -> None:
        """PATCH the transaction to `target`. When the answer is lost, or the node refuses
        or fails in a way that may mean "already done", read the state: a transaction in
        one of the `reached` states (`target` unless given) is a success; one not yet
        moved after a lost answer is PATCHed again."""
        reached = reached or {target}
        paths = self._paths_for(user=user, auth=auth)
        path = _fill(paths.transition, uuid=transaction_uuid, state=target)
        lost: Exception | None = None
        for attempt in range(self._read_attempts):
            try:
                response = self._send("PATCH", path, user=user, auth=auth)
                self._answer(response, body_expected=False)
                return
            except httpx.TransportError as error:
                refusal = None
                lost = error
            except (CCViolation, WorkflowViolation, CCFailure) as violation:
                # "Transaction is already completed" is a CCViolation on the reference node;
                # a CCFailure (500) may come after the node wrote the change.
                refusal = violation
            current = self.transaction(transaction_uuid, user=user, auth=auth)
            if current.state in reached:
                return
            if refusal is not None:
                raise refusal
            self._back_off(attempt)
        raise LedgerUnavailable(
            f"the ledger kept losing its answer to moving {transaction_uuid} to {target}: {lost!r}",
            method="PATCH",
            url=self._url(path),
        )

    # Versions and workflows

    def _paths_for(self, *, user: str, auth: str) -> PathTable:
        if self._paths is None:
            self._load_workflows(user=user, auth=auth)
        assert self._paths is not None
        return self._paths

    def _load_workflows(self, *, user: str, auth: str) -> list[Workflow]:
        if self._workflows is not None:
            return self._workflows
        # The path is the same in every version, so it serves to detect the version.
        path = PATH_TABLES["0.2"].workflows
        data = self._read(path, user=user, auth=auth, unwrap=False)
        if self._paths is None:
            self._paths = PATH_TABLES["0.8" if _is_envelope(data) else "0.2"]
        data = _unwrapped(data)
        try:
            self._workflows = _workflows_from(data)
        except (KeyError, TypeError, AttributeError) as error:
            raise self._bad_shape("GET", path, data, f"not a workflow list ({error!r})") from error
        return self._workflows

    # HTTP

    def _send(
        self,
        method: str,
        path: str,
        *,
        user: str,
        auth: str,
        json: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request, its answer read whole within the timeout: a ledger that drips its
        answer, or sends one without end, fails as one that lost it."""
        request = self._http.build_request(
            method, path, json=json, params=params, headers={"cc-user": user, "cc-auth": auth}
        )
        return send_within(self._http, request, self._timeout_s)

    def _read(
        self,
        path: str,
        *,
        user: str,
        auth: str,
        params: Mapping[str, str] | None = None,
        unwrap: bool = True,
    ) -> Any:
        """GET, tried again with backoff when the ledger cannot be reached."""
        for attempt in range(self._read_attempts):
            try:
                response = self._send("GET", path, user=user, auth=auth, params=params)
            except httpx.TransportError as error:
                if attempt + 1 == self._read_attempts:
                    raise LedgerUnavailable(
                        f"GET {self._url(path)} failed {self._read_attempts} times: {error!r}",
                        method="GET",
                        url=self._url(path),
                    ) from error
                self._back_off(attempt)
                continue
            return self._answer(response, unwrap=unwrap)
        raise AssertionError("unreachable")

    def _answer(
        self, response: httpx.Response, *, body_expected: bool = True, unwrap: bool = True
    ) -> Any:
        """The JSON of an answer, unwrapped from a 0.8 envelope; a typed error for an error
        object; UnexpectedLedgerAnswer for anything else."""
        method, url = response.request.method, str(response.request.url)
        text = response.text
        content_type = response.headers.get("content-type", "")

        def unexpected(reason: str) -> UnexpectedLedgerAnswer:
            return UnexpectedLedgerAnswer(
                reason,
                method=method,
                url=url,
                status=response.status_code,
                content_type=content_type,
                body=text,
            )

        if response.is_redirect:
            # Never followed: the payer's key is for the URL the ad names, the one the
            # payer set as theirs, and no other.
            where = response.headers.get("location", "nowhere said")
            raise unexpected(
                f"a redirect to {where}, not followed (the payer's key is sent to the "
                "ledger's URL as the ad names it, and nowhere else: the node may have moved, "
                "and its portal is to register its new URL)"
            )
        if not text.strip():
            if response.is_success and not body_expected:
                return None
            raise unexpected("an empty body")
        if "json" not in content_type.lower():
            raise unexpected("not JSON")
        data = _leading_json(text)
        if data is _NOT_JSON:
            raise unexpected("a body that does not parse as JSON")
        if isinstance(data, dict) and isinstance(data.get("errors"), list) and data["errors"]:
            first = data["errors"][0]
            if isinstance(first, dict) and "class" in first:
                raise violation_from(first, status=response.status_code)
            raise unexpected("an error list without a class")
        if isinstance(data, dict) and "class" in data and not response.is_success:
            raise violation_from(data, status=response.status_code)
        if not response.is_success:
            raise unexpected("an error that names no class")
        return _unwrapped(data) if unwrap else data

    def _back_off(self, attempt: int) -> None:
        time.sleep(self._retry_backoff_s * 2**attempt)

    def _url(self, path: str) -> str:
        return self.ledger_url + path

    def _bad_shape(self, method: str, path: str, data: Any, reason: str) -> UnexpectedLedgerAnswer:
        body = json.dumps(data)[:500]
        return UnexpectedLedgerAnswer(
            reason,
            method=method,
            url=self._url(path),
            status=200,
            content_type="application/json",
            body=body,
        )

    # Reading the node's shapes

    def _transaction_from(self, data: Any, *, method: str, path: str) -> Transaction:
        try:
            return _transaction_from(data)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise self._bad_shape(method, path, data, f"not a transaction ({error!r})") from error

    def _transactions_from(self, data: Any, *, path: str) -> list[Transaction]:
        if isinstance(data, Mapping):  # keyed by uuid, as some versions answer
            data = list(data.values())
        if not isinstance(data, list):
            raise self._bad_shape("GET", path, data, "not a list of transactions")
        return [self._transaction_from(item, method="GET", path=path) for item in data]

    def _payment_on_this_ledger(self, ad: Any) -> Payment:
        payment = Payment.of(ad)
        if payment.protocol != PROTOCOL:
            raise ValueError(f"this ad is paid with {payment.protocol!r}, not {PROTOCOL!r}")
        if payment.ledger_url.rstrip("/") != self.ledger_url:
            raise ValueError(
                f"this ad is paid on {payment.ledger_url}, not on this ledger {self.ledger_url}"
            )
        # A block that contradicts itself is refused rather than guessed at.
        if not payment.payee:
            raise NotPayable("this ad cannot be paid: its payment block names no payee")
        if not payment.currencies:
            raise NotPayable("this ad cannot be paid: its payment block accepts no currency")
        if payment.price is not None and payment.price.currency not in payment.currencies:
            raise NotPayable(
                f"this ad cannot be paid: its price is in {payment.price.currency}, which "
                f"it does not accept ({', '.join(payment.currencies)})"
            )
        return payment


def _new_idempotency_key() -> str:
    """A new payment's idempotency key: a UUID version 7 (RFC 9562), written out as usual.
    Its first 48 bits are the Unix time in milliseconds, so the key tells when it was made
    and its search need not read what came before (see _search_start); its 74 random
    bits keep it unguessable. Python's uuid module has no uuid7 before 3.14."""
    millis = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 of them used
    return str(
        uuid.UUID(
            # 48 bits of time | version 7 | 12 random bits | variant 0b10 | 62 random bits
            int=(millis << 80)
            | (0x7 << 76)
            | (((random_bits >> 62) & 0xFFF) << 64)
            | (0b10 << 62)
            | (random_bits & ((1 << 62) - 1))
        )
    )


def _key_time(key: str) -> datetime | None:
    """When a UUIDv7 key was made, by its own account; None for any other key (uuid4
    keys of older clients, or any string a caller chose), which tells no time."""
    try:
        value = uuid.UUID(key)
    except ValueError:
        return None
    if value.variant != uuid.RFC_4122 or value.version != 7:
        return None
    return datetime.fromtimestamp((value.int >> 80) / 1000, UTC)


def _search_start(key: str) -> datetime | None:
    """The time from which transactions are searched for `key`; None: from the newest."""
    made = _key_time(key)
    if made is None:
        return None
    # A key from the future says more about its maker's clock than about the payment.
    return min(made, datetime.now(UTC)) - KEY_TIME_MARGIN


def _fills_page(transactions: list[Transaction], *, payer: str) -> bool:
    """Whether a search answer may have been cut short by KEY_SEARCH_LIMIT. The reference
    node's LIMIT counts the payer's entries, not transactions: one with two entries paid
    by the payer (a fee, say) takes two places."""
    entries = sum(1 for t in transactions for e in t.entries if e.payer == payer)
    return max(len(transactions), entries) >= KEY_SEARCH_LIMIT


def _check_as_asked(
    transaction: Transaction, *, payer: str, payee: str, quantity: int, key: str, max_fee: int
) -> None:
    """Before a validated transaction is moved on, which moves value: it is the payment
    asked for, and the fees the node adds, paid by the payer, are accepted."""
    main = transaction.entries[0]
    if (main.payer, main.payee, main.quantity, transaction.idempotency_key) != (
        payer,
        payee,
        quantity,
        key,
    ):
        raise PaymentNotAsAsked(
            transaction, payer=payer, payee=payee, quantity=quantity, idempotency_key=key
        )
    fees = [entry for entry in transaction.entries[1:] if entry.payer == payer]
    fee = sum(entry.quantity for entry in fees)
    if fee > max_fee:
        raise FeeNotAccepted(transaction, fee=fee, max_fee=max_fee, fees=fees)


def _check_not_a_want(ad: Any) -> None:
    """Paying the advertiser of a want would move the credit the wrong way: whoever
    answers a want is the one paid."""
    kind = ad.get("kind") if isinstance(ad, Mapping) else getattr(ad, "kind", None)
    if getattr(kind, "value", kind) == "want":
        raise NotPayable(
            "this ad is a want: its advertiser pays whoever answers it, so it is not paid "
            "from here (its payment block says where the advertiser's account is)"
        )


_NOT_JSON = object()


def _leading_json(text: str) -> Any:
    """The JSON value a body starts with. Trailing text is allowed only when it is PHP
    warnings, which the reference node appends after a JSON body it has written."""
    decoder = json.JSONDecoder()
    stripped = text.lstrip()
    try:
        value, end = decoder.raw_decode(stripped)
    except ValueError:
        return _NOT_JSON
    rest = stripped[end:].strip()
    if rest and not (
        rest.startswith("<br />") and any(marker in rest for marker in PHP_NOTICE_MARKERS)
    ):
        return _NOT_JSON
    return value


def _is_envelope(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and "data" in data
        and "meta" in data
        and data.keys() <= ENVELOPE_KEYS
    )


def _unwrapped(data: Any) -> Any:
    return data["data"] if _is_envelope(data) else data


def _workflows_from(data: Any) -> list[Workflow]:
    """GET /workflows answers the workflows keyed by the node they come from (0.2);
    a plain list is read too."""
    groups = data.values() if isinstance(data, Mapping) else [data]
    workflows = []
    for group in groups:
        for item in group:
            created_by = item["creation"]["by"]
            workflows.append(
                Workflow(
                    id=str(item["id"]),
                    active=_truthy(item.get("active", True)),
                    created_by=(created_by,) if isinstance(created_by, str) else tuple(created_by),
                    creation_state=str(item["creation"]["state"]),
                )
            )
    return workflows


def _truthy(value: Any) -> bool:
    # The reference node says "1" / "0"; the spec says a boolean.
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _transaction_from(data: Mapping[str, Any]) -> Transaction:
    entries = tuple(
        Entry(
            payer=str(item["payer"]),
            payee=str(item["payee"]),
            quantity=int(item["quant"]),
            description=str(item.get("description") or ""),
            author=item.get("author"),
            # PHP answers an empty metadata array as [].
            metadata=dict(item.get("metadata") or {}),
        )
        for item in data["entries"]
    )
    if not entries:
        raise ValueError("a transaction without entries")
    updated = data.get("updated")
    return Transaction(
        uuid=str(data["uuid"]),
        state=str(data["state"]),
        workflow=str(data["type"]),
        version=int(data.get("version") or 0),
        entries=entries,
        transitions=tuple(data.get("transitions") or ()),
        updated=datetime.fromisoformat(updated) if updated else None,
    )


def _activity_from(data: Mapping[str, Any]) -> AccountActivity:
    return AccountActivity(
        balance=int(data["balance"]),
        trades=int(data.get("trades", 0)),
        volume=int(data.get("volume", 0)),
        gross_in=int(data.get("gross_in", 0)),
        gross_out=int(data.get("gross_out", 0)),
        partners=int(data.get("partners", 0)),
    )


def _statement_entry(transaction: Transaction, entry: Entry, account: str) -> StatementEntry:
    received = entry.payee == account
    return StatementEntry(
        transaction_uuid=transaction.uuid,
        state=transaction.state,
        workflow=transaction.workflow,
        updated=transaction.updated,
        payer=entry.payer,
        payee=entry.payee,
        partner=entry.payer if received else entry.payee,
        quantity=entry.quantity,
        amount=entry.quantity if received else -entry.quantity,
        description=entry.description,
        metadata=entry.metadata,
    )


def _fill(template: str, **values: str) -> str:
    return template.format(**{k: urllib.parse.quote(v, safe="") for k, v in values.items()})


def _check_positive_quantity(quantity: Any) -> None:
    # bool is an int in Python; True is no quantity. The node itself accepts negatives.
    if type(quantity) is not int or quantity <= 0:
        raise ValueError(
            f"quantity must be a positive whole number of the ledger's units, got {quantity!r}"
        )


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


# What a header value carries unchanged: visible ASCII, spaces only inside. The user and
# the auth travel as the cc-user and cc-auth headers; httpx refuses anything else with an
# error that does not name the argument (and may quote the secret).
HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


def _check_credentials(user: Any, auth: Any, *, user_role: str = "user") -> None:
    _check_text(user_role, user)
    if HEADER_VALUE.fullmatch(user) is None:
        raise ValueError(
            f"{user_role} must be an account name of visible ASCII characters (it is sent "
            f"as the cc-user header), got {user!r}"
        )
    if not isinstance(auth, str) or HEADER_VALUE.fullmatch(auth) is None:
        raise ValueError(
            "auth must be a non-empty string of visible ASCII characters, without line "
            "breaks or spaces at either end (it is sent as the cc-auth header; a key read "
            "from a file may end with a line break). The value is not shown: it is a secret"
        )


def _check_account(account: Any) -> None:
    _check_text("account", account)
    if account.strip() in {".", ".."}:  # a path segment that would name another path
        raise ValueError(f"account must be an account name, got {account!r}")


def _checked_uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"transaction_uuid must be a UUID, got {value!r}") from None
