"""`DirectoryClient`: every operation of the directory's API (openapi.yaml) as a method
named after its operationId (`searchAds` -> `search_ads`), with typed results (the
msgspec Structs of `directory_client.models`, generated from the same spec), typed
errors (`directory_client.errors`), timeouts and retries (`directory_client.transport`),
and iterators that follow cursors.

    with DirectoryClient("https://directory.example.org", key=portal_key) as directory:
        for hit in directory.iter_search(lat=45.76, lon=4.84, radius_km=10, q="bike"):
            print(hit.title, hit.distance_km)

Request bodies are Structs of `models` or plain mappings of the same shape; a path value
is quoted as one whole segment (empty, "." and ".." raise ValueError). Requests that
change something are tried once unless they are safe to repeat: PUT and DELETE, and POSTs
that the API makes repeatable (an expiry, an inbox acknowledgement, a block, a relay
message carrying an idempotency key, a webhook secret rotation, which always carries
one, a currency registration, a sync session's staging and commit); never one made
conditional with `if_match` or `if_none_match`, whose repeat would fail its own
condition once the first try was applied."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar, overload
from urllib.parse import quote

import httpx
import msgspec

from directory_client import models
from directory_client.errors import (
    NOT_UNDERSTOOD,
    AnswerNotUnderstood,
    ApiError,
    RateLimited,
    error_class,
)
from directory_client.transport import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT_S,
    RetryPolicy,
    Transport,
    query,
    retry_after_s,
)

T = TypeVar("T")
PageT = TypeVar("PageT")
Body = msgspec.Struct | Mapping[str, Any]
GEOJSON = "application/geo+json"
# The directory waits up to 15 s for a portal's webhook endpoint (its name resolved, the
# connection made, the answer read), then answers: a test given less than that, and a
# margin, would time out on the very endpoints it is meant to diagnose, and be repeated.
WEBHOOK_TEST_TIMEOUT_S = 20.0
# The same for a website's check: the directory fetches it for up to 10 s.
WEBSITE_CHECK_TIMEOUT_S = 15.0


class DirectoryClient:
    def __init__(
        self,
        base_url: str,
        *,
        key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        http_transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._transport = Transport(
            base_url, key=key, timeout_s=timeout_s, retry=retry, http_transport=http_transport
        )

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    def __enter__(self) -> DirectoryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    # --- health ---------------------------------------------------------------------

    def healthz(self) -> models.Liveness:
        return self._call("GET", "/healthz", models.Liveness)

    def readyz(self) -> models.Readiness:
        """Readiness; a directory that is not ready raises ServiceUnavailable."""
        return self._call("GET", "/readyz", models.Readiness)

    # --- the calling portal ---------------------------------------------------------

    def get_own_portal(self) -> models.Portal:
        return self._call("GET", "/v1/portals/me", models.Portal)

    def update_own_portal(self, changes: models.PortalPatch | Mapping[str, Any]) -> models.Portal:
        return self._call("PATCH", "/v1/portals/me", models.Portal, body=changes, repeatable=True)

    def verify_website(self) -> models.Portal:
        """Have the directory look for the portal's token on its website now (see the
        profile's `website_verification`); `Conflict` says why when it is not there.
        Waits at least WEBSITE_CHECK_TIMEOUT_S for the answer, whatever `timeout_s`."""
        return self._call(
            "POST",
            "/v1/portals/me/website/verify",
            models.Portal,
            repeatable=True,
            min_timeout_s=WEBSITE_CHECK_TIMEOUT_S,
        )

    def get_webhook_secret(self) -> models.WebhookSecrets:
        return self._call("GET", "/v1/portals/me/webhook-secret", models.WebhookSecrets)

    def rotate_webhook_secret(
        self, *, overlap_hours: int = 24, idempotency_key: str | None = None
    ) -> models.WebhookSecrets:
        """A new signing secret; the current one signs beside it for `overlap_hours`.

        Repeated safely after a lost answer: the rotation carries an idempotency key (a
        random one unless given), and the directory answers a repeat with the secrets
        as they are instead of rotating twice, which would end at once the secret the
        portal's receiver holds. To repeat a rotation by hand, give the same key."""
        return self._call(
            "POST",
            "/v1/portals/me/webhook-secret",
            models.WebhookSecrets,
            body={
                "overlap_hours": overlap_hours,
                "idempotency_key": idempotency_key or str(uuid.uuid4()),
            },
            repeatable=True,
        )

    def test_webhook(self) -> models.WebhookTest:
        """Have the directory send a signed `webhook.test` event to the portal's webhook
        now, and say how the endpoint answered (`delivered`, `status`, `error`). Safe to
        repeat: a test changes nothing. Waits at least WEBHOOK_TEST_TIMEOUT_S for the
        answer, whatever `timeout_s`: an endpoint that does not answer is what a test
        is for, and the directory says so only once it has given up on it."""
        return self._call(
            "POST",
            "/v1/portals/me/webhook/test",
            models.WebhookTest,
            repeatable=True,
            min_timeout_s=WEBHOOK_TEST_TIMEOUT_S,
        )

    # --- ads ------------------------------------------------------------------------

    def get_ad(self, ad_id: str) -> models.PublicAd:
        """A public ad by the directory's id, as the world may see it."""
        return self._call("GET", f"/v1/ads/{_segment('ad_id', ad_id)}", models.PublicAd)

    def put_ad(
        self,
        external_id: str,
        ad: models.AdPut | Mapping[str, Any],
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> models.Ad:
        """Create or replace one of the portal's ads by its own id (idempotent).

        `if_match=ad.etag` replaces the ad only if it is still as it was read;
        `if_none_match="*"` creates it only if there is none, never replacing one. When
        the condition does not hold: PreconditionFailed (412), nothing changed. A
        conditional PUT is not repeated after a lost answer (DirectoryUnavailable: it may
        or may not have been applied; `get_own_ad` tells)."""
        return self._call(
            "PUT",
            f"/v1/ads/{_segment('external_id', external_id)}",
            models.Ad,
            body=ad,
            headers=_preconditions(if_match=if_match, if_none_match=if_none_match),
        )

    def delete_ad(self, external_id: str, *, if_match: str | None = None) -> None:
        """Delete one of the portal's ads; deleting one that is not there is harmless.

        `if_match=ad.etag` deletes it only if it is still as it was read: else
        PreconditionFailed (412), also when the ad is gone, and nothing is deleted. Not
        repeated after a lost answer, like any conditional write (see `put_ad`)."""
        self._call(
            "DELETE",
            f"/v1/ads/{_segment('external_id', external_id)}",
            None,
            headers=_preconditions(if_match=if_match),
        )

    def expire_ad(self, external_id: str, *, if_match: str | None = None) -> models.Ad:
        """End one of the portal's ads now (it keeps it); expiring it again is harmless.

        `if_match=ad.etag` expires it only if it is still as it was read: else
        PreconditionFailed (412), nothing changed. Expiring changes the ETag, so a
        conditional expiry is not repeated after a lost answer (see `put_ad`)."""
        return self._call(
            "POST",
            f"/v1/ads/{_segment('external_id', external_id)}/expire",
            models.Ad,
            headers=_preconditions(if_match=if_match),
            repeatable=True,
        )

    def batch_ads(
        self,
        items: Iterable[models.BatchItem | Mapping[str, Any]],
        *,
        replace: bool = False,
    ) -> models.BatchResult:
        """Up to 1,000 upserts, deletes and expiries in one transaction, a result each.
        Tried once: an upsert sent twice reports `unchanged` the second time."""
        body = {"items": list(items)}
        if replace:
            body["replace"] = True
        return self._call("POST", "/v1/ads/batch", models.BatchResult, body=body)

    def list_own_ads(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        include_expired: bool | None = None,
    ) -> models.OwnAdsPage:
        params = query({"limit": limit, "cursor": cursor, "include_expired": include_expired})
        return self._call("GET", "/v1/portals/me/ads", models.OwnAdsPage, params=params)

    def iter_own_ads(
        self, *, page_size: int = 1000, include_expired: bool = True
    ) -> Iterator[models.Ad]:
        return _follow(
            lambda cursor: self.list_own_ads(
                limit=page_size, cursor=cursor, include_expired=include_expired
            ),
            lambda page: page.items,
            what="GET /v1/portals/me/ads",
        )

    @overload
    def get_own_ad(self, external_id: str) -> models.Ad: ...

    @overload
    def get_own_ad(self, external_id: str, *, if_none_match: str) -> models.Ad | None: ...

    def get_own_ad(self, external_id: str, *, if_none_match: str | None = None) -> models.Ad | None:
        """One of the portal's ads, whatever its visibility or expiry. With
        `if_none_match=` the `etag` of a copy held: None while that copy is current (304),
        else the ad as it is now."""
        return self._call(
            "GET",
            f"/v1/portals/me/ads/{_segment('external_id', external_id)}",
            models.Ad,
            headers=_preconditions(if_none_match=if_none_match),
        )

    # --- search ---------------------------------------------------------------------

    def search_ads(
        self,
        *,
        q: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        radius_km: float | None = None,
        bbox: tuple[float, float, float, float] | None = None,
        kind: str | None = None,
        category: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
        currency: Iterable[str] | None = None,
        language: Iterable[str] | None = None,
        portal: Iterable[str] | None = None,
        updated_since: datetime | None = None,
        has_price: bool | None = None,
        payable: bool | None = None,
        price_currency: str | None = None,
        price_min: str | None = None,
        price_max: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        facets: Iterable[str] | None = None,
    ) -> models.SearchPage:
        """One page of hits (see GET /v1/search); `next_cursor` continues it."""
        params = query(_strings(locals()))
        return self._call("GET", "/v1/search", models.SearchPage, params=params)

    def search_ads_geojson(self, **filters: Any) -> models.GeoJSONPage:
        """The same search as a GeoJSON FeatureCollection (same keyword arguments)."""
        params = query(_strings(filters))
        return self._call(
            "GET", "/v1/search", models.GeoJSONPage, params=params, headers={"Accept": GEOJSON}
        )

    def iter_search(self, *, page_size: int = 100, **filters: Any) -> Iterator[models.SearchHit]:
        """Every hit of a search, page after page (the cursor stays correct while ads
        change underneath)."""
        return _follow(
            lambda cursor: self.search_ads(limit=page_size, cursor=cursor, **filters),
            lambda page: page.hits,
            what="GET /v1/search",
        )

    # --- full resync (sync sessions) ------------------------------------------------

    def open_sync_session(self) -> models.SyncSession:
        return self._call("POST", "/v1/sync-sessions", models.SyncSession)

    def get_sync_session(self, session_id: str) -> models.SyncSession:
        return self._call(
            "GET", f"/v1/sync-sessions/{_segment('session_id', session_id)}", models.SyncSession
        )

    def abort_sync_session(self, session_id: str) -> None:
        self._call("DELETE", f"/v1/sync-sessions/{_segment('session_id', session_id)}", None)

    def stage_sync_items(
        self, session_id: str, items: Iterable[models.StageItem | Mapping[str, Any]]
    ) -> models.StageResult:
        """Stage ads in a session; staging an ad again replaces it in the session, so a
        repeat is harmless."""
        return self._call(
            "POST",
            f"/v1/sync-sessions/{_segment('session_id', session_id)}/items",
            models.StageResult,
            body={"items": list(items)},
            repeatable=True,
        )

    def commit_sync_session(
        self, session_id: str, *, delete_all: bool = False
    ) -> models.CommitResult:
        """Apply the session; a commit repeated after a lost answer is answered as the
        first was, so a repeat is harmless. A session in which nothing was staged deletes
        all of the portal's ads, and is refused (Conflict, `empty_resync`) unless
        `delete_all`."""
        return self._call(
            "POST",
            f"/v1/sync-sessions/{_segment('session_id', session_id)}/commit",
            models.CommitResult,
            body={"delete_all": True} if delete_all else None,
            repeatable=True,
        )

    # --- the contact relay ----------------------------------------------------------

    def get_relay_limits(self) -> models.RelayLimits:
        return self._call("GET", "/v1/relay/limits", models.RelayLimits)

    def contact_advertiser(
        self, ad_id: str, message: models.Contact | Mapping[str, Any]
    ) -> models.Sent:
        """Open a conversation about an ad for a member; repeated safely when the message
        carries an idempotency_key."""
        return self._call(
            "POST",
            f"/v1/ads/{_segment('ad_id', ad_id)}/contact",
            models.Sent,
            body=message,
            repeatable=_has_idempotency_key(message),
        )

    def list_conversations(
        self,
        *,
        member: str | None = None,
        ad_id: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> models.ConversationPage:
        params = query({"member": member, "ad_id": ad_id, "cursor": cursor, "limit": limit})
        return self._call("GET", "/v1/conversations", models.ConversationPage, params=params)

    def iter_conversations(
        self, *, member: str | None = None, ad_id: str | None = None, page_size: int = 100
    ) -> Iterator[models.ConversationSummary]:
        return _follow(
            lambda cursor: self.list_conversations(
                member=member, ad_id=ad_id, cursor=cursor, limit=page_size
            ),
            lambda page: page.conversations,
            what="GET /v1/conversations",
        )

    def get_conversation(
        self, conversation_id: str, *, after: int | None = None, limit: int | None = None
    ) -> models.Conversation:
        params = query({"after": after, "limit": limit})
        return self._call(
            "GET",
            f"/v1/conversations/{_segment('conversation_id', conversation_id)}",
            models.Conversation,
            params=params,
        )

    def post_message(
        self, conversation_id: str, message: models.MessagePost | Mapping[str, Any]
    ) -> models.Sent:
        return self._call(
            "POST",
            f"/v1/conversations/{_segment('conversation_id', conversation_id)}/messages",
            models.Sent,
            body=message,
            repeatable=_has_idempotency_key(message),
        )

    def post_messages(
        self, items: Iterable[models.BatchMessage | Mapping[str, Any]]
    ) -> models.MessageBatchResult:
        """Up to 100 messages, a result each (created, sent_before or rejected): each in
        a conversation (conversation_id) or opening one with an ad's advertiser (ad_id and
        name), for a portal that relays its members' messages in turns. Repeated safely
        (after a timeout, say) when every message carries an idempotency_key: the repeat
        answers sent_before for those already sent."""
        messages = list(items)
        return self._call(
            "POST",
            "/v1/messages/batch",
            models.MessageBatchResult,
            body={"items": messages},
            repeatable=bool(messages) and all(map(_has_idempotency_key, messages)),
        )

    def block_conversation(
        self, conversation_id: str, block: models.Block | Mapping[str, Any]
    ) -> models.ConversationSummary:
        return self._call(
            "POST",
            f"/v1/conversations/{_segment('conversation_id', conversation_id)}/block",
            models.ConversationSummary,
            body=block,
            repeatable=True,
        )

    def erase_member(self, member: str) -> models.Erasure:
        """Erase a member of the calling portal from the directory: their ads, their
        conversations' messages, their handle and name (see the API's eraseMember).
        Erasing again removes nothing more, so a repeat is harmless."""
        return self._call(
            "POST",
            "/v1/portals/me/member-erasures",
            models.Erasure,
            body={"member": member},
            repeatable=True,
        )

    def list_blocked_portals(self) -> models.BlockedPortalList:
        """The portals the calling portal blocks, the latest blocked first (all of them)."""
        return self._call("GET", "/v1/portals/me/blocked-portals", models.BlockedPortalList)

    def block_portal(self, slug: str) -> models.BlockedPortal:
        """Block another portal: no conversation between its members and the calling
        portal's, new or ongoing, either way (see the API's blockPortal). Blocking again
        answers the first block, so a repeat is harmless."""
        return self._call(
            "PUT",
            f"/v1/portals/me/blocked-portals/{_segment('slug', slug)}",
            models.BlockedPortal,
        )

    def unblock_portal(self, slug: str) -> None:
        """Unblock a portal; one that is not blocked is no error."""
        self._call("DELETE", f"/v1/portals/me/blocked-portals/{_segment('slug', slug)}", None)

    def read_inbox(self, *, since: str | None = None, limit: int | None = None) -> models.InboxPage:
        params = query({"since": since, "limit": limit})
        return self._call("GET", "/v1/inbox", models.InboxPage, params=params)

    def acknowledge_inbox(self, ids: Iterable[str]) -> models.Acknowledged:
        """Acknowledge events by id (acknowledging twice is harmless)."""
        return self._call(
            "POST", "/v1/inbox/ack", models.Acknowledged, body={"ids": list(ids)}, repeatable=True
        )

    def process_inbox(
        self, handle: Callable[[models.InboxEvent], None], *, page_size: int = 100
    ) -> int:
        """Hand every waiting inbox event to `handle`, oldest first, and acknowledge the
        handled ones page by page; returns how many were handled. When `handle` raises,
        the events handled before it are acknowledged and the error propagates: that event
        and the ones after it stay in the inbox for the next call. Events may come twice
        (a webhook may have delivered one meanwhile): deduplicate by `event.id`."""
        handled_count = 0
        since = None
        followed: set[str] = set()
        while True:
            page = self.read_inbox(since=since, limit=page_size)
            _check_not_followed("GET /v1/inbox", page.next_since, followed)
            handled: list[str] = []
            try:
                for event in page.events:
                    handle(event)
                    handled.append(event.id)
            finally:
                if handled:
                    self.acknowledge_inbox(handled)
                handled_count += len(handled)
            if page.next_since is None:
                return handled_count
            since = page.next_since

    # --- the change feed ------------------------------------------------------------

    def read_feed(self, *, since: str | None = None, limit: int | None = None) -> models.FeedPage:
        params = query({"since": since, "limit": limit})
        return self._call("GET", "/v1/feed", models.FeedPage, params=params)

    def iter_feed(
        self, *, since: str | None = None, page_size: int = 500
    ) -> Iterator[tuple[models.FeedEntry, str | None]]:
        """Every change waiting now, in order, each with the cursor to store once it is
        handled, or None. A cursor (`since=` it continues) resumes after the end of a page,
        so only the last change of each page comes with one. A reader stopped elsewhere and
        resumed from the last cursor it stored reads again the changes it handled after
        it (handle changes idempotently, by `ad_id`), and misses none."""
        followed = {since} if since is not None else set()
        while True:
            page = self.read_feed(since=since, limit=page_size)
            if page.more:
                _check_not_followed("GET /v1/feed", page.next_cursor, followed)
            last = len(page.changes) - 1
            for position, entry in enumerate(page.changes):
                yield entry, page.next_cursor if position == last else None
            since = page.next_cursor
            if not page.more:
                return

    # --- currencies and categories --------------------------------------------------

    def list_currencies(
        self, *, kind: str | None = None, portal: str | None = None
    ) -> models.CurrencyList:
        params = query({"kind": kind, "portal": portal})
        return self._call("GET", "/v1/currencies", models.CurrencyList, params=params)

    def register_currency(
        self, currency: models.CurrencyCreate | Mapping[str, Any]
    ) -> models.Currency1:
        """Register a community currency; the same registration repeated after a lost
        answer is answered with the currency (200), so a repeat is harmless."""
        return self._call(
            "POST", "/v1/currencies", models.Currency1, body=currency, repeatable=True
        )

    def get_currency(self, code: str) -> models.Currency1:
        return self._call("GET", f"/v1/currencies/{_segment('code', code)}", models.Currency1)

    def update_currency(
        self, code: str, changes: models.CurrencyPatch | Mapping[str, Any]
    ) -> models.Currency1:
        return self._call(
            "PATCH",
            f"/v1/currencies/{_segment('code', code)}",
            models.Currency1,
            body=changes,
            repeatable=True,
        )

    def delete_currency(self, code: str) -> None:
        self._call("DELETE", f"/v1/currencies/{_segment('code', code)}", None)

    def list_categories(self) -> models.CategoryList:
        return self._call("GET", "/v1/categories", models.CategoryList)

    # --- one call -------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        result: type[T] | None,
        *,
        params: Mapping[str, str] | None = None,
        body: Body | None = None,
        headers: Mapping[str, str] | None = None,
        repeatable: bool | None = None,
        min_timeout_s: float | None = None,
    ) -> T:
        content = None if body is None else msgspec.json.encode(body)
        response = self._transport.request(
            method,
            path,
            params=params,
            content=content,
            headers=headers,
            repeatable=repeatable,
            min_timeout_s=min_timeout_s,
        )
        if response.status_code == 304:  # answers If-None-Match only: the copy held is current
            return None  # type: ignore[return-value]
        if not response.is_success:
            raise api_error(response)
        if result is None:
            return None  # type: ignore[return-value]
        try:
            return msgspec.json.decode(response.content, type=result)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise AnswerNotUnderstood(f"{method} {path}: {NOT_UNDERSTOOD}: {error}") from error


def api_error(response: httpx.Response) -> ApiError:
    """The typed error for an error answer, from the envelope when there is one."""
    try:
        envelope = msgspec.json.decode(response.content, type=models.Error)
        code, message, errors = envelope.error, envelope.message, envelope.errors
    except (msgspec.DecodeError, msgspec.ValidationError):  # not the directory's (a proxy's)
        code, message, errors = "http_error", response.reason_phrase or "error", {}
    cls = error_class(response.status_code)
    extra = {"retry_after": retry_after_s(response)} if cls is RateLimited else {}
    return cls(
        response.status_code,
        code,
        message,
        errors,
        request_id=response.headers.get("X-Request-Id"),
        **extra,
    )


def _follow(
    fetch: Callable[[str | None], PageT], items: Callable[[PageT], Iterable[T]], *, what: str
) -> Iterator[T]:
    """The items of every page, each page fetched with the previous one's next_cursor
    (`what`, the request, names it in errors)."""
    cursor = None
    followed: set[str] = set()
    while True:
        page = fetch(cursor)
        _check_not_followed(what, page.next_cursor, followed)
        yield from items(page)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _check_not_followed(what: str, cursor: str | None, followed: set[str]) -> None:
    """Remember `cursor`, a page's way on; AnswerNotUnderstood if it was given before.
    The directory's cursors only move on; one given again points back to a page read
    already (a cache or proxy in front of it answering the first page whatever the
    cursor), and following it would yield the same items again, for ever. Checked before
    the page's items are yielded: they are those of a page read already."""
    if cursor is None:
        return
    if cursor in followed:
        raise AnswerNotUnderstood(
            f"{what}: {NOT_UNDERSTOOD}: a page's cursor was given before, so following it "
            "would read the same pages again without end (a cache or proxy answering the "
            "same page whatever the cursor?)"
        )
    followed.add(cursor)


def _segment(name: str, value: str) -> str:
    """`value` as one whole segment of a path, `name` the argument it came from. Empty,
    "." and ".." are refused before anything is sent: a URL resolves such a segment away,
    so the request would go to another path (`get_own_ad(".")` to the list of ads) and
    fail there, or succeed, without naming it."""
    text = str(value)
    if text in {"", ".", ".."}:
        raise ValueError(f'{name} must not be empty, "." or "..", not {text!r}')
    return quote(text, safe="")


def _strings(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Search arguments as query values (bbox as its four numbers)."""
    values = {name: value for name, value in arguments.items() if name != "self"}
    bbox = values.get("bbox")
    if bbox is not None and not isinstance(bbox, str):
        values["bbox"] = ",".join(str(number) for number in bbox)
    return values


def _preconditions(
    *, if_match: str | None = None, if_none_match: str | None = None
) -> dict[str, str]:
    """The If-Match and If-None-Match headers that are given (ETags as `Ad.etag` has
    them, or `*`)."""
    headers = {"If-Match": if_match, "If-None-Match": if_none_match}
    return {name: value for name, value in headers.items() if value is not None}


def _has_idempotency_key(message: Body) -> bool:
    if isinstance(message, Mapping):
        return bool(message.get("idempotency_key"))
    return bool(getattr(message, "idempotency_key", None))
