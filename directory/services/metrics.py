"""What an operator watches and alerts on, read from the database at each scrape.

Everything comes from the database, not from counters kept in each process: any API
process answers the same, and a worker that stopped shows as deliveries waiting past
their time rather than as a silence. Each figure is read from a partial index or from
PostgreSQL's own statistics, so a scrape costs milliseconds at any size; the counts of
rows in the large tables are PostgreSQL's estimates."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from directory.models import PortalStatus
from directory.services.deliveries import PARKED


class MetricType(enum.StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"  # only goes up, but starts over when the database's statistics do


@dataclass(frozen=True)
class Metric:
    name: str
    type: MetricType
    help: str
    samples: list[tuple[dict[str, str], float]]  # (labels, value)


# Tables whose size is shown (estimated), and whose inserts are counted.
ESTIMATED_TABLES = ("ads", "conversations", "messages")

_SNAPSHOT = text(
    """
    SELECT
      (SELECT count(*) FROM deliveries
        WHERE state = 'pending' AND next_attempt_at <> :parked) AS pending_webhook,
      (SELECT count(*) FROM deliveries
        WHERE state = 'pending' AND next_attempt_at = :parked) AS pending_inbox,
      (SELECT count(*) FROM deliveries WHERE state = 'failed') AS failed,
      due.count AS due,
      coalesce(extract(epoch FROM now() - due.oldest), 0) AS oldest_due_s,
      coalesce(extract(epoch FROM now() - (
        SELECT min(created_at) FROM deliveries WHERE state = 'pending')), 0)
        AS oldest_pending_s,
      (SELECT count(*) FROM portals WHERE webhook_disabled_at IS NOT NULL)
        AS webhooks_disabled,
      (SELECT count(*) FROM portals
        WHERE website_verified_at IS NOT NULL AND website_recheck_failing_since IS NOT NULL)
        AS websites_failing,
      (SELECT count(*) FROM sync_sessions WHERE status = 'open') AS sync_sessions_open
    FROM (
      -- What the worker would claim now: due, to a webhook, of an active portal.
      SELECT count(*) AS count, min(next_attempt_at) AS oldest FROM deliveries
      WHERE state = 'pending' AND next_attempt_at <= now()
        AND portal_id <> ALL(ARRAY(SELECT id FROM portals WHERE status <> 'active'))
    ) AS due
    """
)

_PORTALS_BY_STATUS = text("SELECT status::text, count(*) FROM portals GROUP BY status")

_TABLE_STATISTICS = text(
    """
    SELECT relname, greatest(n_live_tup, 0), n_tup_ins FROM pg_stat_user_tables
    WHERE schemaname = current_schema() AND relname = ANY(:tables)
    """
)


def operational_metrics(session: Session) -> list[Metric]:
    row = session.execute(_SNAPSHOT, {"parked": PARKED}).one()
    portals = dict(session.execute(_PORTALS_BY_STATUS).all())
    tables = {
        name: (live, inserted)
        for name, live, inserted in session.execute(
            _TABLE_STATISTICS, {"tables": list(ESTIMATED_TABLES)}
        )
    }
    return [
        Metric(
            "directory_relay_deliveries",
            MetricType.GAUGE,
            "Relay events (messages, and ends of conversations) not yet delivered to their "
            "portal: pending by webhook (retried by the worker), pending in the inbox only "
            "(the portal has no working webhook), or failed (the delivery period ended).",
            [
                ({"state": "pending", "channel": "webhook"}, row.pending_webhook),
                ({"state": "pending", "channel": "inbox"}, row.pending_inbox),
                ({"state": "failed", "channel": "any"}, row.failed),
            ],
        ),
        Metric(
            "directory_relay_deliveries_due",
            MetricType.GAUGE,
            "Webhook deliveries due now that no worker has taken yet.",
            [({}, row.due)],
        ),
        Metric(
            "directory_relay_oldest_due_seconds",
            MetricType.GAUGE,
            "How long the longest-waiting due webhook delivery has waited for a worker "
            "(0: none waits). Growing past the lease (DIRECTORY_DELIVERY_LEASE_S): no "
            "worker is running, or they cannot keep up.",
            [({}, float(row.oldest_due_s))],
        ),
        Metric(
            "directory_relay_oldest_pending_seconds",
            MetricType.GAUGE,
            "Age of the oldest relay event (a message, or a conversation's end) not yet "
            "delivered (by webhook or inbox); it is marked failed at "
            "DIRECTORY_DELIVERY_GIVE_UP_AFTER_HOURS.",
            [({}, float(row.oldest_pending_s))],
        ),
        Metric(
            "directory_portals",
            MetricType.GAUGE,
            "Portals, by status.",
            [({"status": status.value}, portals.get(status.value, 0)) for status in PortalStatus],
        ),
        Metric(
            "directory_portal_webhooks_disabled",
            MetricType.GAUGE,
            "Portals whose webhook was disabled (it answered 410 Gone).",
            [({}, row.webhooks_disabled)],
        ),
        Metric(
            "directory_websites_failing",
            MetricType.GAUGE,
            "Verified websites whose token the re-checks have not found lately.",
            [({}, row.websites_failing)],
        ),
        Metric(
            "directory_sync_sessions_open",
            MetricType.GAUGE,
            "Full resyncs begun and not yet committed or aborted.",
            [({}, row.sync_sessions_open)],
        ),
        Metric(
            "directory_rows_estimated",
            MetricType.GAUGE,
            "Rows in the largest tables, as PostgreSQL's statistics estimate them.",
            [({"table": name}, tables.get(name, (0, 0))[0]) for name in ESTIMATED_TABLES],
        ),
        Metric(
            "directory_rows_inserted",
            MetricType.COUNTER,
            "Rows inserted into the largest tables since PostgreSQL's statistics were "
            "last reset (messages: the messages accepted by the relay).",
            [({"table": name}, tables.get(name, (0, 0))[1]) for name in ESTIMATED_TABLES],
        ),
    ]
