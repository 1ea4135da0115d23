"""Settings read once from DIRECTORY_* environment variables, validated, then frozen."""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

ENVIRONMENTS = ("development", "test", "production")
SEARCH_ENGINES = ("postgres", "meilisearch")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The one driver installed is psycopg 3; a plain postgresql:// URL is given it.
POSTGRESQL_URL_PREFIXES = ("postgresql://", "postgresql+psycopg://")
POSTGRESQL_URL_FORMS = "a postgresql:// (or postgresql+psycopg://) URL"
# The values libpq takes for its connection options whose values are words; it checks
# them, and the numbers below, only when it connects (conninfo_to_dict reads any value).
# An option the installed libpq does not know is refused by name before.
LIBPQ_OPTION_VALUES: dict[str, tuple[str, ...]] = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),  # libpq 16
    "sslcertmode": ("disable", "allow", "require"),  # libpq 16
    "sslnegotiation": ("postgres", "direct"),  # libpq 17
}
# libpq's whole-number options, smallest and largest (inclusive), spelt 0-9 only: libpq
# also reads " 5" and "-1" (for connect_timeout: no timeout at all), psycopg "1.5", and
# a value spelt so is a typo more likely. The keepalives' are set on the socket, where
# Linux takes 1 to 32767 seconds and 1 to 127 probes and refuses the connection otherwise.
LIBPQ_NUMERIC_OPTION_RANGES: dict[str, tuple[int, int]] = {
    "connect_timeout": (0, 2**31 - 1),  # seconds; 0: none
    "keepalives": (0, 1),
    "keepalives_idle": (1, 32_767),
    "keepalives_interval": (1, 32_767),
    "keepalives_count": (1, 127),
    "tcp_user_timeout": (0, 2**31 - 1),  # milliseconds; 0: the system's
}
BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
# Each numeric setting's smallest and largest value (inclusive). The maximums are far
# beyond any real use and below where a value would break later: PostgreSQL's
# statement_timeout (32-bit milliseconds), datetimes past the year 9999, timedelta's
# range, LIMIT (bigint). The delivery durations are floats: above 0 and finite.
NUMERIC_RANGES: dict[str, tuple[float, float]] = {
    "ad_default_ttl_days": (1, 36_500),
    "ad_max_ttl_days": (1, 36_500),
    "max_request_bytes": (1024, 1024**3),
    "sync_session_ttl_hours": (1, 24 * 365),
    "sync_session_max_items": (1, 10**9),
    "sync_session_max_open_per_portal": (1, 10**6),
    "portal_max_ads": (1, 10**9),
    "db_pool_size": (1, 1000),
    "db_statement_timeout_ms": (1, 2**31 - 1),
    "search_statement_timeout_ms": (1, 2**31 - 1),
    "trusted_proxies": (0, 100),
    "relay_conversations_per_member_per_hour": (1, 10**9),
    "relay_conversations_per_portal_per_hour": (1, 10**9),
    "relay_conversations_with_one_member_per_hour": (1, 10**9),
    "relay_unanswered_messages": (1, 10**6),
    "relay_retention_days": (1, 36_500),
    "delivery_first_retry_s": (0.001, 30 * 24 * 3600),
    "delivery_max_retry_s": (0.001, 30 * 24 * 3600),
    "delivery_give_up_after_hours": (0.001, 30 * 24),
    "delivery_lease_s": (0.001, 30 * 24 * 3600),
    "website_recheck_days": (1, 3650),
    "website_recheck_grace_days": (1, 3650),
    "website_checks_at_once": (1, 100),
}
# The longest Meilisearch index name: its feed position is stored under it
# (search_index_positions.index_name, VARCHAR(64)).
MEILISEARCH_INDEX_MAX_CHARS = 64
# A search rate limit's longest window: "per year" (360 days to the limits library). Far
# longer windows break the Redis counters, which expire after twice the window.
LONGEST_RATE_LIMIT_WINDOW_S = 366 * 24 * 3600
# What a number setting may look like: 10, 0.5, 2e3, and inf or nan to be refused by range.
FLOAT_PATTERN = r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]?(inf|nan)"
# A delivery's lease must outlast its sending (webhooks.delivery.TOTAL_TIMEOUT_S, 15 s,
# name resolution included) and its recording, in the deliverer's next round. Tests run
# the worker with shorter leases (and senders) to see dead workers replaced in seconds.
MIN_PRODUCTION_DELIVERY_LEASE_S = 30
# A shorter metrics token could be guessed by trying.
METRICS_TOKEN_MIN_CHARS = 32
# The DIRECTORY_* variables that are no settings but that the project's other tools read,
# from an environment `directory serve` may share. from_env warns of any other
# DIRECTORY_* name: a misspelt setting left its default in force without a word.
OTHER_TOOLS_VARIABLES = frozenset(
    {
        # directory-client and directory-sync (clients/python), and the TypeScript
        # client's live tests (clients/typescript/test/live.ts)
        "DIRECTORY_URL",
        # directory-sync (never on its command line), the TypeScript client's live tests
        "DIRECTORY_PORTAL_KEY",
        # the TypeScript client's live tests
        "DIRECTORY_RATE_LIMITED_URL",
        "DIRECTORY_SEED_FILE",
        # nginx in front of the API (deploy/nginx.conf.template, docker-compose.yml)
        "DIRECTORY_UPSTREAM",
        # `directory localdb` (directory/localdb.py): `make run`'s and the tests' cluster
        "DIRECTORY_PG_BIN",
        # the tests: tests/search/conftest.py and tests/test_indexing.py (a live
        # Meilisearch), tests/test_schemathesis.py, tests/credit_commons.py
        "DIRECTORY_TEST_MEILISEARCH_URL",
        "DIRECTORY_TEST_MEILISEARCH_KEY",
        "DIRECTORY_SCHEMATHESIS_EXAMPLES",
        "DIRECTORY_CREDIT_COMMONS_PEER",
    }
)
# What Kubernetes puts in every pod's environment for each service in its namespace (a
# service `directory`, or `directory-db`, gives DIRECTORY_SERVICE_HOST, DIRECTORY_PORT,
# DIRECTORY_DB_PORT_5432_TCP_ADDR...): no one's typo, and no cause for a warning in the
# cluster the directory is most likely run in.
SERVICE_LINK_VARIABLE = re.compile(
    r"DIRECTORY_(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?)?)"
)


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    environment: str = "development"
    database_url: str = "postgresql+psycopg://directory@127.0.0.1:5432/directory"
    # Searches may read a replica; empty: the primary (database_url).
    search_database_url: str = ""
    search_engine: str = "postgres"
    meilisearch_url: str = "http://127.0.0.1:7700"
    meilisearch_key: str = ""
    # Several directories (or test runs) may share one Meilisearch under their own names.
    meilisearch_index: str = "ads"
    # Ads without an explicit expiry live this long after their last change.
    ad_default_ttl_days: int = 90
    ad_max_ttl_days: int = 366
    # A whole batch of 1,000 large ads fits; anything bigger is refused with 413.
    max_request_bytes: int = 16 * 1024 * 1024
    sync_session_ttl_hours: int = 24
    # A commit applies every staged ad in one request: about 0.2 ms each, so 100,000 take
    # some 20 s, well inside the workers' timeout; unbounded, a session took as long as
    # its portal liked, at every retry.
    sync_session_max_items: int = 100_000
    # Each open session holds its staged ads until it is committed, aborted or expires:
    # unbounded, a portal (or a client opening sessions in a loop) held as many as it
    # liked. A full resync needs one.
    sync_session_max_open_per_portal: int = 5
    # The most ads a portal stores (409 too_many_ads beyond), unless an operator set its
    # own (`directory portals set-max-ads`): unbounded, one buggy or hostile portal could
    # fill the directory and slow every search. As many as one sync session stages, so a
    # full resync of a portal at its limit fits in one session.
    portal_max_ads: int = 100_000
    log_level: str = "INFO"
    db_pool_size: int = 5
    # A runaway query is cancelled (503) rather than left to hold a connection.
    db_statement_timeout_ms: int = 60_000
    # Searches are anyone's, and take milliseconds: one that runs this long is cancelled
    # (503) before it holds a database core for as long as a sync commit may.
    search_statement_timeout_ms: int = 10_000
    # Where rate-limit counters live: redis://… so that every worker process shares
    # them (`make run` starts one); memory:// counts per process (development only).
    rate_limit_storage_url: str = "memory://"
    # One limit each: every limit costs each search a Redis round trip. Pages of the
    # change feed are limited alike, counted apart from searches.
    search_rate_limit_anonymous: str = "120 per minute"  # per client address
    search_rate_limit_portal: str = "3000 per minute"  # per portal key
    # Reverse proxies in front of the API whose X-Forwarded-For is believed (0: none;
    # the client address is then the connection's).
    trusted_proxies: int = 0
    # --- the contact relay ---
    # Webhooks to http://127.0.0.1 and other loopback addresses (tests, `make run`'s demo
    # on one machine); never in production, where webhook URLs must be https.
    webhook_allow_loopback: bool = False
    # New conversations a member, and a whole portal, may open per hour.
    relay_conversations_per_member_per_hour: int = 20
    relay_conversations_per_portal_per_hour: int = 2000
    # New conversations one portal's members may open with one member (an advertiser)
    # per hour: a portal making up handles is held to this many with anyone.
    relay_conversations_with_one_member_per_hour: int = 50
    # Messages a party may send in a row before the other answers (409 awaiting_reply):
    # enough to follow up on a question, not to flood a member who does not answer.
    relay_unanswered_messages: int = 10
    # Messages (and conversations left empty) are deleted this long after they were sent.
    relay_retention_days: int = 365
    # Delivery retries: the first after this long, then doubling (with jitter) up to
    # the maximum, until the message is this old; it is then marked failed.
    delivery_first_retry_s: float = 10.0
    delivery_max_retry_s: float = 3600.0
    delivery_give_up_after_hours: float = 72.0
    # A worker that claimed a delivery and died is replaced after this long: the
    # delivery is tried again (same webhook-id).
    delivery_lease_s: float = 60.0
    # A website verified by a fetch is looked at again this often (daily while its token
    # is missing); its verification is withdrawn once the token has been missing this long.
    website_recheck_days: int = 7
    website_recheck_grace_days: int = 14
    # Portals' website verifications fetched at once, directory-wide: each holds an API
    # process for up to 10 s, so fewer than the API has processes, for it to answer others.
    website_checks_at_once: int = 1
    # --- operations ---
    # The bearer token Prometheus sends to scrape GET /metrics; empty: no metrics. They
    # tell the relay's traffic, which no portal may learn, so they are never public.
    metrics_token: str = ""

    def __post_init__(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise SettingsError(
                f"DIRECTORY_ENVIRONMENT must be one of {', '.join(ENVIRONMENTS)}, "
                f"not {self.environment!r}"
            )
        if self.search_engine not in SEARCH_ENGINES:
            raise SettingsError(
                f"DIRECTORY_SEARCH_ENGINE must be one of {', '.join(SEARCH_ENGINES)}, "
                f"not {self.search_engine!r}"
            )
        _check_database_url("DIRECTORY_DATABASE_URL", self.database_url)
        if self.search_database_url:
            _check_database_url("DIRECTORY_SEARCH_DATABASE_URL", self.search_database_url)
        for name in ("database_url", "search_database_url"):
            url = getattr(self, name)
            if url.startswith("postgresql://"):
                # One driver everywhere: psycopg 3.
                object.__setattr__(self, name, "postgresql+psycopg://" + url[13:])
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                f"DIRECTORY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        for name, (minimum, maximum) in NUMERIC_RANGES.items():
            value = getattr(self, name)
            if not minimum <= value <= maximum:  # also false for NaN
                raise SettingsError(
                    f"DIRECTORY_{name.upper()} must be between {minimum} and {maximum}, "
                    f"not {value!r}"
                )
        if self.ad_default_ttl_days > self.ad_max_ttl_days:
            raise SettingsError(
                "DIRECTORY_AD_DEFAULT_TTL_DAYS must be at most DIRECTORY_AD_MAX_TTL_DAYS"
            )
        if self.search_engine == "meilisearch" and not _is_http_url(self.meilisearch_url):
            # Otherwise every search would fail, the empty URL with a 500.
            raise SettingsError(
                "DIRECTORY_MEILISEARCH_URL must be an http:// or https:// URL, such as "
                "http://127.0.0.1:7700, when DIRECTORY_SEARCH_ENGINE=meilisearch"
            )
        if (
            self.environment == "production"
            and self.search_engine == "meilisearch"
            and not self.meilisearch_key
        ):
            raise SettingsError(
                "DIRECTORY_MEILISEARCH_KEY must be set in production when "
                "DIRECTORY_SEARCH_ENGINE=meilisearch"
            )
        if not re.fullmatch(
            rf"[A-Za-z0-9_-]{{1,{MEILISEARCH_INDEX_MAX_CHARS}}}", self.meilisearch_index
        ) or (self.meilisearch_index.endswith("_new")):
            raise SettingsError(
                f"DIRECTORY_MEILISEARCH_INDEX must be 1 to {MEILISEARCH_INDEX_MAX_CHARS} "
                "letters, digits, '-' or '_' (and not end in _new, the name of a rebuild "
                "in progress)"
            )
        if self.delivery_max_retry_s < self.delivery_first_retry_s:
            raise SettingsError(
                "DIRECTORY_DELIVERY_MAX_RETRY_S must be at least DIRECTORY_DELIVERY_FIRST_RETRY_S"
            )
        if self.environment == "production":
            if self.webhook_allow_loopback:
                raise SettingsError(
                    "DIRECTORY_WEBHOOK_ALLOW_LOOPBACK must not be set in production: webhooks "
                    "go to portals' public https URLs"
                )
            if self.delivery_give_up_after_hours < 72:
                raise SettingsError(
                    "DIRECTORY_DELIVERY_GIVE_UP_AFTER_HOURS must be at least 72 in production "
                    "(a portal down over a weekend must still get its messages)"
                )
            if self.delivery_lease_s < MIN_PRODUCTION_DELIVERY_LEASE_S:
                raise SettingsError(
                    "DIRECTORY_DELIVERY_LEASE_S must be at least "
                    f"{MIN_PRODUCTION_DELIVERY_LEASE_S} in production: a webhook may take "
                    "15 s to send, and a delivery whose lease ends meanwhile is claimed and "
                    "sent again while the first sending goes on"
                )
        if self.metrics_token and not re.fullmatch(
            rf"[\x21-\x7e]{{{METRICS_TOKEN_MIN_CHARS},200}}", self.metrics_token
        ):
            raise SettingsError(
                f"DIRECTORY_METRICS_TOKEN must be {METRICS_TOKEN_MIN_CHARS} to 200 printable "
                "ASCII characters without spaces (such as `openssl rand -hex 32` prints)"
            )
        for name in ("search_rate_limit_anonymous", "search_rate_limit_portal"):
            _check_rate_limit(f"DIRECTORY_{name.upper()}", getattr(self, name))
        if not self.rate_limit_storage_url.startswith(("memory://", "redis://", "rediss://")):
            raise SettingsError(
                "DIRECTORY_RATE_LIMIT_STORAGE_URL must be a redis:// URL (or memory:// "
                "outside production)"
            )
        if self.rate_limit_storage_url.startswith(("redis://", "rediss://")):
            _check_redis_url("DIRECTORY_RATE_LIMIT_STORAGE_URL", self.rate_limit_storage_url)
        if self.environment == "production" and self.rate_limit_storage_url == "memory://":
            raise SettingsError(
                "DIRECTORY_RATE_LIMIT_STORAGE_URL must be a redis:// URL in production: "
                "counted in memory, each worker process would allow the whole limit"
            )

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: never with a password or a key.
        shown = ", ".join(
            f"{field.name}={_without_secrets(field.name, getattr(self, field.name))!r}"
            for field in fields(self)
        )
        return f"{type(self).__name__}({shown})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        _warn_of_unknown_variables(environ)
        values: dict[str, object] = {}
        for field in fields(cls):
            name = "DIRECTORY_" + field.name.upper()
            if name not in environ:
                continue
            raw = environ[name]
            # Python's int() and float() also read " 5", "5_0" (50) and other digits than
            # 0-9: a value spelt so is a typo more likely than a number.
            if field.type == "int":
                if not re.fullmatch(r"-?[0-9]+", raw):
                    raise SettingsError(f"{name} must be a whole number, not {raw!r}")
                values[field.name] = int(raw)
            elif field.type == "float":
                if not re.fullmatch(FLOAT_PATTERN, raw):
                    raise SettingsError(f"{name} must be a number, not {raw!r}")
                values[field.name] = float(raw)
            elif field.type == "bool":
                if raw.lower() not in BOOLEANS:
                    raise SettingsError(f"{name} must be 1 or 0 (true or false), not {raw!r}")
                values[field.name] = BOOLEANS[raw.lower()]
            else:
                values[field.name] = raw
        if values.get("environment") == "production" and "database_url" not in values:
            # The default points at a password-less local database: never what production means.
            raise SettingsError("DIRECTORY_DATABASE_URL must be set in production")
        return cls(**values)


# Once a process: a command reads its settings more than once.
_warned_of: set[str] = set()


def _warn_of_unknown_variables(environ: Mapping[str, str]) -> None:
    """Each DIRECTORY_* name that is neither a setting nor another tool's, by its name
    only (its value may be a secret), with the known name it is closest to. Warned of,
    not refused: a setting of a later release, in an environment that processes of two
    releases share during a rolling deploy (or kept for a rollback), must not stop this
    one from starting."""
    known = {"DIRECTORY_" + field.name.upper() for field in fields(Settings)}
    known |= OTHER_TOOLS_VARIABLES
    # Compared without the prefix every name shares, which made any name look close to many.
    suffixes = [name.removeprefix("DIRECTORY_") for name in known]
    for name in sorted(environ):
        if (
            not name.startswith("DIRECTORY_")
            or name in known
            or SERVICE_LINK_VARIABLE.fullmatch(name)
            or name in _warned_of
        ):
            continue
        _warned_of.add(name)
        close = difflib.get_close_matches(name.removeprefix("DIRECTORY_"), suffixes, n=1)
        log.warning(
            "%s is not a setting of this release, and is ignored (%s)",
            name,
            f"did you mean DIRECTORY_{close[0]}?"
            if close
            else "README.md lists the settings, under Operating it",
        )


def _without_secrets(name: str, value: object) -> object:
    if name.endswith(("_key", "_token")):
        return "***" if value else value
    if not name.endswith("_url") or not isinstance(value, str):
        return value
    try:
        parts = urlsplit(value)
        if parts.password is None:
            return value
    except ValueError:
        return "***"  # unreadable: the password could be anywhere in it
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def _check_database_url(name: str, url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    # Never the URL itself in the message: it may hold a password.
    if not url.startswith(POSTGRESQL_URL_PREFIXES):
        raise SettingsError(f"{name} must be {POSTGRESQL_URL_FORMS}")
    try:
        query = make_url(url).query
    except (ArgumentError, ValueError):
        raise SettingsError(
            f"{name} must be {POSTGRESQL_URL_FORMS}: it could not be read (a port that is "
            "no number? characters of the password to %-escape?)"
        ) from None
    # libpq reads an option's last value, which is what is checked below; the engine
    # passes them all, as one value no option takes ("('require', 'require')"). Hosts
    # given one by one are the engine's way to name several.
    for option, value in query.items():
        if isinstance(value, tuple) and option != "host":
            raise SettingsError(f"{name} gives {option} more than once: give it once")
    # What libpq will make of it, read as libpq reads it when connecting (only the
    # options' names are checked then, not their values): otherwise an unknown option, or
    # a value libpq does not take (sslmode=requre), failed the first connection, with a
    # traceback, and a port out of range or a database left out failed (or went to the
    # database named after the user) later.
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    from directory.db import libpq_url

    try:
        conninfo = conninfo_to_dict(libpq_url(url))
    except ProgrammingError as error:
        option = re.search(r'"([A-Za-z0-9_]*)"', str(error))
        raise SettingsError(
            f"{name} has an option PostgreSQL does not know"
            + (f" ({option[1]})" if option else "")
            + ": see libpq's connection parameters"
        ) from None
    for option, values in LIBPQ_OPTION_VALUES.items():
        if option in conninfo and conninfo[option] not in values:
            raise SettingsError(f"{name}'s {option} must be one of {', '.join(values)}")
    for option, (minimum, maximum) in LIBPQ_NUMERIC_OPTION_RANGES.items():
        value = str(conninfo.get(option, ""))
        if option in conninfo and not (
            re.fullmatch(r"[0-9]{1,10}", value) and minimum <= int(value) <= maximum
        ):
            raise SettingsError(
                f"{name}'s {option} must be a whole number between {minimum} and {maximum}"
            )
    ports = str(conninfo.get("port", "")).split(",")
    if conninfo.get("port") is not None and not all(
        re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535 for port in ports
    ):
        raise SettingsError(f"{name} must have a port between 1 and 65535")
    if not conninfo.get("dbname"):
        raise SettingsError(
            f"{name} must name the database, as in postgresql://user@host:5432/directory"
        )


def _check_redis_url(name: str, url: str) -> None:
    """As redis-py reads it when the API starts or counts: a port that is no number made
    every API process fail to start, an unknown option every search fail (500), and a
    database that is no number was read as database 0."""
    import redis

    example = "such as redis://host:6379/0"
    try:
        path = urlsplit(url).path
        redis.ConnectionPool.from_url(url).make_connection()  # builds it, connects nowhere
    except TypeError as error:  # an option no connection takes
        option = re.search(r"argument '(\w+)'", str(error))
        raise SettingsError(
            f"{name} has an option Redis connections do not take"
            + (f" ({option[1]})" if option else "")
        ) from None
    except (ValueError, redis.RedisError) as error:
        # redis-py's messages name the part it could not read, never the password.
        raise SettingsError(f"{name} could not be read ({error}): {example}") from None
    if not re.fullmatch(r"/?|/[0-9]+", path):
        raise SettingsError(f"{name} must name the Redis database by its number, {example}")


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is no number, or out of range
        return False


def _check_rate_limit(name: str, value: str) -> None:
    from limits import parse_many

    try:
        # "0 per minute" would refuse every search.
        usable = all(
            limit.amount >= 1 and limit.get_expiry() <= LONGEST_RATE_LIMIT_WINDOW_S
            for limit in parse_many(value)
        )
    except ValueError:
        usable = False
    if not usable:
        raise SettingsError(
            f"{name} must be rate limits such as '60 per minute; 10 per second', each "
            f"allowing at least 1 in a window of at most a year, not {value!r}"
        )
