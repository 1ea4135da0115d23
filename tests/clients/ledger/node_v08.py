"""A stand-in for a Credit Commons node speaking API 0.8, which we cannot run: a real HTTP
server on 127.0.0.1 that keeps a small ledger in memory and answers in the 0.8 shapes
the peer README describes:
- the same `cc-user`/`cc-auth` headers, `POST /transaction`, `PATCH /transaction/{uuid}/{state}`
  and error class names as 0.2;
- bodies wrapped in {"data": ..., "meta": {...}}, errors in {"errors": [{class, ...}]};
- `GET /transaction/{uuid}`, `GET /transactions`, `GET /entries/{uuid}` and
  `GET /account/summary?acc_path=` instead of the 0.2 paths, which answer 404 here;
- `GET /transactions` filtered as in 0.2 (payer, payee, involving, states, `after` on the
  time of the last change), sorted by `sort` (`created,desc` unless told), and cut to
  `limit` transactions: 10 unless told.
Its workflows differ from the reference node's on purpose (a payer workflow named
`payment`, after an inactive one), so that a client hard-coding `credit` fails."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

NODE_NAME = "node08"
DEFAULT_LIMIT = 10  # transactions a list holds when the request does not say
TRANSITIONS = {"pending": {"completed": "payee", "erased": "payer"}}
WORKFLOWS = [
    {
        "id": "old-payment",
        "label": "Old payment",
        "summary": "Retired.",
        "active": False,
        "creation": {"by": ["payer"], "state": "pending", "label": "Pay", "confirm": True},
        "states": {"pending": {"completed": {"label": "Sign", "signatories": ["payee"]}}},
    },
    {
        "id": "invoice",
        "label": "Invoice",
        "summary": "The payee bills.",
        "active": True,
        "creation": {"by": ["payee"], "state": "pending", "label": "Bill", "confirm": True},
        "states": {"pending": {"completed": {"label": "Sign", "signatories": ["payer"]}}},
    },
    {
        "id": "payment",
        "label": "Payment",
        "summary": "The payer pays; the payee signs.",
        "active": True,
        "creation": {"by": ["payer"], "state": "pending", "label": "Pay", "confirm": True},
        "states": {
            "pending": {
                "completed": {"label": "Sign", "signatories": ["payee"]},
                "erased": {"label": "Erase", "signatories": ["payer"]},
            }
        },
    },
]


# Kept by the node, not shown in a transaction.
HIDDEN_FIELDS = {"author", "created"}
FEES_ACCOUNT = "fees"


class Violation(Exception):
    def __init__(self, status: int, **error: Any) -> None:
        self.status = status
        self.error = {"node": NODE_NAME, **error}


@dataclass
class NodeV08:
    accounts: dict[str, tuple[str, int, int]]  # name -> (key, min, max)
    requests: list[str] = field(default_factory=list)  # "METHOD /path?query"
    html_crash_paths: set[str] = field(default_factory=set)  # answered as a PHP fatal error
    shapeless_paths: set[str] = field(default_factory=set)  # answered as JSON of no known shape
    transactions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A fee the node's business logic adds to each new transaction, paid by its payer to
    # FEES_ACCOUNT in an entry of its own, as Credit Commons nodes may (0: none).
    payer_fee: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> NodeV08:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # The API

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        with self._lock:
            user = self._authenticate(headers)
            if method == "GET" and url.path == "/workflows":
                return 200, self._wrap(WORKFLOWS)
            if method == "POST" and url.path == "/transaction":
                return 200, self._wrap(self._create(user, json.loads(body)))
            if method == "PATCH" and len(parts) == 3 and parts[0] == "transaction":
                return 200, self._wrap(self._move(user, parts[1], parts[2]))
            if method == "GET" and len(parts) == 2 and parts[0] == "transaction":
                return 200, self._wrap(self._view(self._load(parts[1]), user))
            if method == "GET" and url.path == "/transactions":
                found = self._filter(user, query)
                return 200, {"data": found, "meta": {"number_of_results": len(found)}}
            if method == "GET" and len(parts) == 2 and parts[0] == "entries":
                return 200, self._wrap(self._load(parts[1])["entries"])
            if method == "GET" and url.path == "/account/summary" and "acc_path" in query:
                return 200, self._wrap(self._summary(query["acc_path"]))
        return 404, None

    def _authenticate(self, headers: dict[str, str]) -> str:
        user, key = headers.get("cc-user", ""), headers.get("cc-auth", "")
        if user not in self.accounts or self.accounts[user][0] != key:
            raise Violation(400, **{"class": "AuthViolation", "acc_id": user})
        return user

    def _create(self, user: str, data: dict[str, Any]) -> dict[str, Any]:
        missing = [f for f in ("payer", "payee", "quant", "description", "type") if f not in data]
        if missing:
            raise Violation(
                400,
                **{"class": "InvalidFieldsViolation", "fields": dict.fromkeys(missing, "Missing")},
            )
        workflow = next((w for w in WORKFLOWS if w["id"] == data["type"] and w["active"]), None)
        if workflow is None:
            raise Violation(
                400, **{"class": "DoesNotExistViolation", "type": "workflow", "id": data["type"]}
            )
        for role in ("payer", "payee"):
            if data[role] not in self.accounts:
                raise Violation(
                    400, **{"class": "DoesNotExistViolation", "type": "account", "id": data[role]}
                )
        if data[workflow["creation"]["by"][0]] != user:
            raise Violation(
                400,
                **{
                    "class": "WorkflowViolation",
                    "acc_id": user,
                    "type": workflow["id"],
                    "from": "init",
                    "to": "pending",
                },
            )
        quant = int(data["quant"])
        payer_projected = self._balance(data["payer"], ("pending", "completed")) - quant
        payee_projected = self._balance(data["payee"], ("pending", "completed")) + quant
        if payer_projected < self.accounts[data["payer"]][1]:
            raise Violation(
                400,
                **{
                    "class": "MinLimitViolation",
                    "acc_id": data["payer"],
                    "limit": self.accounts[data["payer"]][1],
                    "projected": payer_projected,
                },
            )
        if payee_projected > self.accounts[data["payee"]][2]:
            raise Violation(
                400,
                **{
                    "class": "MaxLimitViolation",
                    "acc_id": data["payee"],
                    "limit": self.accounts[data["payee"]][2],
                    "projected": payee_projected,
                },
            )
        transaction = self._write(
            author=user,
            workflow=workflow["id"],
            payer=data["payer"],
            payee=data["payee"],
            quant=quant,
            description=data["description"],
            metadata=data.get("metadata") or {},
            state="validated",
            when=datetime.now(UTC),
        )
        if self.payer_fee:
            transaction["entries"].append(
                {
                    "payer": data["payer"],
                    "payee": FEES_ACCOUNT,
                    "quant": self.payer_fee,
                    "description": f"payer fee of {self.payer_fee} to {FEES_ACCOUNT}",
                    "author": FEES_ACCOUNT,
                    "metadata": {},
                }
            )
        return self._view(transaction, user)

    def record(
        self,
        *,
        payer: str,
        payee: str,
        quant: int,
        state: str = "completed",
        metadata: dict[str, Any] | None = None,
        when: datetime | None = None,
    ) -> str:
        """Write a payment as if its payer had made it at `when` (now unless given) and
        moved it on to `state`, without asking: for tests that need many, or old ones.
        Its uuid."""
        with self._lock:
            transaction = self._write(
                author=payer,
                workflow="payment",
                payer=payer,
                payee=payee,
                quant=quant,
                description="recorded",
                metadata=metadata or {},
                state=state,
                when=when or datetime.now(UTC),
            )
        return transaction["uuid"]

    def _write(
        self,
        *,
        author: str,
        workflow: str,
        payer: str,
        payee: str,
        quant: int,
        description: str,
        metadata: dict[str, Any],
        state: str,
        when: datetime,
    ) -> dict[str, Any]:
        transaction = {
            "uuid": str(uuid.uuid4()),  # 0.8 too makes its own uuid
            "created": _iso(when),
            "updated": _iso(when),
            "state": state,
            "type": workflow,
            "version": 0 if state == "validated" else 1,
            "author": author,
            "entries": [
                {
                    "payer": payer,
                    "payee": payee,
                    "quant": quant,
                    "description": description,
                    "author": author,
                    "metadata": metadata,
                }
            ],
        }
        self.transactions[transaction["uuid"]] = transaction
        return transaction

    def _move(self, user: str, transaction_uuid: str, target: str) -> dict[str, Any]:
        transaction = self._load(transaction_uuid)
        if transaction["state"] == target:
            raise Violation(
                400, **{"class": "CCViolation", "message": f"Transaction is already {target}"}
            )
        if target not in self._transitions(transaction, user):
            raise Violation(
                400,
                **{
                    "class": "WorkflowViolation",
                    "acc_id": user,
                    "type": transaction["type"],
                    "from": transaction["state"],
                    "to": target,
                },
            )
        transaction.update(
            state=target, version=transaction["version"] + 1, updated=_iso(datetime.now(UTC))
        )
        return self._view(transaction, user)

    def _load(self, transaction_uuid: str) -> dict[str, Any]:
        if transaction_uuid not in self.transactions:
            raise Violation(
                400,
                **{"class": "DoesNotExistViolation", "type": "transaction", "id": transaction_uuid},
            )
        return self.transactions[transaction_uuid]

    def _transitions(self, transaction: dict[str, Any], user: str) -> list[str]:
        entry = transaction["entries"][0]
        if transaction["state"] == "validated":
            return ["pending"] if user == transaction["author"] else []
        relation = (
            "payer" if user == entry["payer"] else "payee" if user == entry["payee"] else None
        )
        return [
            s for s, who in TRANSITIONS.get(transaction["state"], {}).items() if who == relation
        ]

    def _view(self, transaction: dict[str, Any], user: str) -> dict[str, Any]:
        shown = {k: v for k, v in transaction.items() if k not in HIDDEN_FIELDS}
        return {**shown, "transitions": self._transitions(transaction, user)}

    def _filter(self, user: str, query: dict[str, str]) -> list[dict[str, Any]]:
        states = query.get("states", "pending,completed").split(",")
        found = []
        for transaction in self.transactions.values():
            entry = transaction["entries"][0]
            if transaction["state"] not in states:
                continue
            if transaction["state"] == "validated" and transaction["author"] != user:
                continue
            if "payer" in query and entry["payer"] != query["payer"]:
                continue
            if "payee" in query and entry["payee"] != query["payee"]:
                continue
            if "involving" in query and query["involving"] not in (entry["payer"], entry["payee"]):
                continue
            if "after" in query and datetime.fromisoformat(
                transaction["updated"]
            ) <= datetime.fromisoformat(query["after"]):
                continue
            found.append(transaction)
        field_name, _, direction = query.get("sort", "created,desc").partition(",")
        if field_name not in ("created", "updated") or direction not in ("", "asc", "desc"):
            raise Violation(
                400, **{"class": "CCViolation", "message": f"Cannot sort on {query['sort']}"}
            )
        # A stable sort: transactions of one microsecond stay in the order they were made.
        found.sort(key=lambda t: t[field_name], reverse=direction != "asc")
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise Violation(
                400, **{"class": "InvalidFieldsViolation", "fields": {"limit": "Not a number"}}
            ) from None
        return [self._view(transaction, user) for transaction in found[:limit]]

    def _balance(self, account: str, states: tuple[str, ...]) -> int:
        total = 0
        for transaction in self.transactions.values():
            if transaction["state"] in states:
                for entry in transaction["entries"]:
                    total += entry["quant"] * (
                        (entry["payee"] == account) - (entry["payer"] == account)
                    )
        return total

    def _summary(self, account: str) -> dict[str, Any]:
        if account not in self.accounts:
            raise Violation(
                400, **{"class": "DoesNotExistViolation", "type": "account", "id": account}
            )
        return {
            name: {
                "balance": self._balance(account, states),
                "trades": 0,
                "volume": 0,
                "gross_in": 0,
                "gross_out": 0,
                "partners": 0,
            }
            for name, states in (
                ("completed", ("completed",)),
                ("pending", ("pending", "completed")),
            )
        }

    def _wrap(self, data: Any) -> dict[str, Any]:
        return {"data": data, "meta": {"node": NODE_NAME}}


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _handler_for(node: NodeV08) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PATCH(self) -> None:
            self._handle()

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            node.requests.append(f"{self.command} {self.path}")
            if any(self.path.startswith(p) for p in node.html_crash_paths):
                self._write(
                    200,
                    b"<br />\n<b>Fatal error</b>:  Uncaught Error in x.php<br />\n",
                    "text/html",
                )
                return
            if any(self.path.startswith(p) for p in node.shapeless_paths):
                self._write(200, b'{"data": {"odd": []}, "meta": {}}', "application/json")
                return
            try:
                status, data = node.answer(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
            except Violation as violation:
                status, data = violation.status, {"errors": [violation.error]}
            if data is None:
                self._write(status, b"Not found", "text/plain")
            else:
                self._write(status, json.dumps(data).encode(), "application/json")

        def _write(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet

    return Handler
