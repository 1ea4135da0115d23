"""Settings come from DIRECTORY_* variables, are validated once, and a bad value stops
the start with a message naming the variable."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from directory import build_wiring
from directory import settings as settings_module
from directory.db import make_engine, unit_of_work
from directory.search.indexing import load_position, store_position
from directory.settings import (
    MEILISEARCH_INDEX_MAX_CHARS,
    MIN_PRODUCTION_DELIVERY_LEASE_S,
    NUMERIC_RANGES,
    OTHER_TOOLS_VARIABLES,
    SERVICE_LINK_VARIABLE,
    Settings,
    SettingsError,
)
from directory.webhooks.delivery import TOTAL_TIMEOUT_S as WEBHOOK_TOTAL_TIMEOUT_S
from directory.worker import DELIVERY_POLL_S, Deliverer, housekeeping

URL = "postgresql+psycopg://directory@db.example:5432/directory"
FLOAT_SETTINGS = [field.name for field in dataclasses.fields(Settings) if field.type == "float"]


def test_from_env_reads_directory_variables():
    settings = Settings.from_env(
        {
            "DIRECTORY_ENVIRONMENT": "production",
            "DIRECTORY_DATABASE_URL": URL,
            "DIRECTORY_SEARCH_ENGINE": "meilisearch",
            "DIRECTORY_MEILISEARCH_URL": "http://search.internal:7700",
            "DIRECTORY_MEILISEARCH_KEY": "a-long-master-key",
            "DIRECTORY_LOG_LEVEL": "WARNING",
            "DIRECTORY_RATE_LIMIT_STORAGE_URL": "redis://cache.internal:6379/0",
            "DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS": "30 per minute",
            "DIRECTORY_TRUSTED_PROXIES": "1",
            "DIRECTORY_SEARCH_DATABASE_URL": "postgresql://reader@replica.internal/directory",
        }
    )

    assert settings.environment == "production"
    assert settings.database_url == URL
    assert settings.search_engine == "meilisearch"
    assert settings.meilisearch_url == "http://search.internal:7700"
    assert settings.meilisearch_key == "a-long-master-key"
    assert settings.log_level == "WARNING"
    assert settings.rate_limit_storage_url == "redis://cache.internal:6379/0"
    assert settings.search_rate_limit_anonymous == "30 per minute"
    assert settings.trusted_proxies == 1
    assert settings.search_database_url == (
        "postgresql+psycopg://reader@replica.internal/directory"
    )


def test_from_env_parses_whole_numbers():
    settings = Settings.from_env(
        {
            "DIRECTORY_AD_DEFAULT_TTL_DAYS": "30",
            "DIRECTORY_AD_MAX_TTL_DAYS": "60",
            "DIRECTORY_MAX_REQUEST_BYTES": "2048",
            "DIRECTORY_SYNC_SESSION_TTL_HOURS": "6",
            "DIRECTORY_SYNC_SESSION_MAX_OPEN_PER_PORTAL": "2",
            "DIRECTORY_DB_POOL_SIZE": "12",
        }
    )

    assert settings.ad_default_ttl_days == 30
    assert settings.ad_max_ttl_days == 60
    assert settings.max_request_bytes == 2048
    assert settings.sync_session_ttl_hours == 6
    assert settings.sync_session_max_open_per_portal == 2
    assert settings.db_pool_size == 12


def test_from_env_ignores_other_variables_and_keeps_defaults():
    assert Settings.from_env({"PATH": "/usr/bin", "HOME": "/root"}) == Settings()


@pytest.fixture(autouse=True)
def warnings_afresh(monkeypatch):
    """Each test as a process of its own: a name is warned of once a process."""
    monkeypatch.setattr(settings_module, "_warned_of", set())


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        pytest.param(
            "DIRECTORY_WEBHOOK_ALLOW_LOOPBAK",
            "DIRECTORY_WEBHOOK_ALLOW_LOOPBAK is not a setting of this release, and is ignored "
            "(did you mean DIRECTORY_WEBHOOK_ALLOW_LOOPBACK?)",
            id="letter-left-out",
        ),
        pytest.param(
            "DIRECTORY_RELAY_UNANSWERED_MESAGES",
            "DIRECTORY_RELAY_UNANSWERED_MESAGES is not a setting of this release, and is ignored "
            "(did you mean DIRECTORY_RELAY_UNANSWERED_MESSAGES?)",
            id="letter-left-out-of-a-long-name",
        ),
        pytest.param(
            "DIRECTORY_METRIC_TOKEN",
            "DIRECTORY_METRIC_TOKEN is not a setting of this release, and is ignored (did you mean DIRECTORY_METRICS_TOKEN?)",
            id="secret-misspelt",
        ),
        pytest.param(
            "DIRECTORY_PORTAL_KY",
            "DIRECTORY_PORTAL_KY is not a setting of this release, and is ignored (did you mean DIRECTORY_PORTAL_KEY?)",
            id="another-tools-variable-misspelt",
        ),
        pytest.param(
            "DIRECTORY_COLOUR",
            "DIRECTORY_COLOUR is not a setting of this release, and is ignored (README.md lists the settings, under Operating it)",
            id="nothing-close",
        ),
    ],
)
def test_from_env_warns_of_a_directory_variable_it_does_not_know(variable, message, caplog):
    """Read as before, a misspelt setting left its default in force without a word. Not
    refused: a later release's setting, in an environment shared during a rolling deploy,
    must not stop this one."""
    with caplog.at_level(logging.WARNING, logger="directory.settings"):
        assert Settings.from_env({variable: "s3cret-value"}) == Settings()

    assert [record.getMessage() for record in caplog.records] == [message]
    assert "s3cret" not in caplog.text  # a value may be a secret


def test_from_env_names_every_directory_variable_it_does_not_know_and_reads_the_rest(caplog):
    with caplog.at_level(logging.WARNING, logger="directory.settings"):
        settings = Settings.from_env(
            {
                "DIRECTORY_LOG_LEVEL": "DEBUG",
                "DIRECTORY_TRUSTED_PROXY": "1",
                "DIRECTORY_DB_POOLSIZE": "5",
            }
        )

    assert settings.log_level == "DEBUG"
    assert [record.getMessage() for record in caplog.records] == [
        "DIRECTORY_DB_POOLSIZE is not a setting of this release, and is ignored "
        "(did you mean DIRECTORY_DB_POOL_SIZE?)",
        "DIRECTORY_TRUSTED_PROXY is not a setting of this release, and is ignored "
        "(did you mean DIRECTORY_TRUSTED_PROXIES?)",
    ]


def test_from_env_leaves_alone_the_directory_variables_other_tools_read():
    assert Settings.from_env(dict.fromkeys(OTHER_TOOLS_VARIABLES, "1")) == Settings()


def test_from_env_leaves_alone_what_kubernetes_sets_for_services_named_directory(caplog):
    """A pod sees these for every service of its namespace: `directory` (the API itself),
    `directory-db` and `directory-meilisearch` here."""
    kubernetes = {
        "DIRECTORY_SERVICE_HOST": "10.0.0.11",
        "DIRECTORY_SERVICE_PORT": "8000",
        "DIRECTORY_SERVICE_PORT_HTTP": "8000",
        "DIRECTORY_PORT": "tcp://10.0.0.11:8000",
        "DIRECTORY_PORT_8000_TCP": "tcp://10.0.0.11:8000",
        "DIRECTORY_PORT_8000_TCP_PROTO": "tcp",
        "DIRECTORY_PORT_8000_TCP_PORT": "8000",
        "DIRECTORY_PORT_8000_TCP_ADDR": "10.0.0.11",
        "DIRECTORY_DB_SERVICE_HOST": "10.0.0.12",
        "DIRECTORY_DB_PORT_5432_TCP_ADDR": "10.0.0.12",
        "DIRECTORY_MEILISEARCH_SERVICE_PORT": "7700",
        "DIRECTORY_MEILISEARCH_PORT_7700_UDP": "udp://10.0.0.13:7700",
    }
    with caplog.at_level(logging.WARNING, logger="directory.settings"):
        assert Settings.from_env(kubernetes) == Settings()
        assert caplog.records == []
        # Only those shapes: a name misspelt near them is still warned of.
        misspelt = ("DIRECTORY_SERVICE_HOSTS", "DIRECTORY_PORT_TCP", "DIRECTORY_PORTS")
        Settings.from_env(dict.fromkeys(misspelt, "1"))
    assert sorted(record.args[0] for record in caplog.records) == sorted(misspelt)


# DIRECTORY_* names in the repository that no one reads or sets: clients/python's
# constant holding the name DIRECTORY_URL, and the misspellings that tests show refused.
NOT_VARIABLES = {
    "DIRECTORY_VARIABLE",
    "DIRECTORY_WEBHOOK_ALLOW_LOOPBAK",
    "DIRECTORY_RELAY_UNANSWERED_MESAGES",
    "DIRECTORY_METRIC_TOKEN",
    "DIRECTORY_PORTAL_KY",
    "DIRECTORY_COLOUR",
    "DIRECTORY_TRUSTED_PROXY",
    "DIRECTORY_DB_POOLSIZE",
    "DIRECTORY_SERVICE_HOSTS",
    "DIRECTORY_PORT_TCP",
    "DIRECTORY_PORTS",
}


def test_every_directory_variable_the_repository_names_is_a_setting_or_another_tools():
    """A tool of the project that reads a DIRECTORY_* variable of its own stops
    `directory serve` started in the same environment, until the variable is named in
    OTHER_TOOLS_VARIABLES (or becomes a setting)."""
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout: its files are not known")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True
    ).stdout.decode()
    named: dict[str, str] = {}  # each name, and the first file naming it
    for path in filter(None, listed.split("\0")):
        if (root / path).is_file():  # not deleted from the work tree
            text = (root / path).read_bytes().decode(errors="replace")
            for name in re.findall(r"\bDIRECTORY_[A-Z0-9_]*[A-Z0-9]\b", text):
                named.setdefault(name, path)
    settings = {f"DIRECTORY_{field.name.upper()}" for field in dataclasses.fields(Settings)}

    unknown = {
        name: path
        for name, path in named.items()
        if name not in settings | OTHER_TOOLS_VARIABLES | NOT_VARIABLES
        and not SERVICE_LINK_VARIABLE.fullmatch(name)
    }

    assert unknown == {}, "name each in OTHER_TOOLS_VARIABLES, or here in NOT_VARIABLES"
    assert set(named) >= OTHER_TOOLS_VARIABLES  # none left over from a tool since gone
    assert set(named) >= NOT_VARIABLES


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DIRECTORY_AD_DEFAULT_TTL_DAYS": "ninety"}, "DIRECTORY_AD_DEFAULT_TTL_DAYS"),
        ({"DIRECTORY_AD_MAX_TTL_DAYS": "1.5"}, "DIRECTORY_AD_MAX_TTL_DAYS"),
        ({"DIRECTORY_DB_POOL_SIZE": ""}, "DIRECTORY_DB_POOL_SIZE"),
        ({"DIRECTORY_ENVIRONMENT": "nope"}, "DIRECTORY_ENVIRONMENT"),
        ({"DIRECTORY_SEARCH_ENGINE": "elastic"}, "DIRECTORY_SEARCH_ENGINE"),
        ({"DIRECTORY_DATABASE_URL": "mysql://directory@db/directory"}, "DIRECTORY_DATABASE_URL"),
        ({"DIRECTORY_DATABASE_URL": "sqlite:///directory.db"}, "DIRECTORY_DATABASE_URL"),
        (
            {"DIRECTORY_AD_DEFAULT_TTL_DAYS": "400", "DIRECTORY_AD_MAX_TTL_DAYS": "366"},
            "DIRECTORY_AD_DEFAULT_TTL_DAYS",
        ),
        ({"DIRECTORY_AD_DEFAULT_TTL_DAYS": "0"}, "DIRECTORY_AD_DEFAULT_TTL_DAYS"),
        ({"DIRECTORY_MAX_REQUEST_BYTES": "100"}, "DIRECTORY_MAX_REQUEST_BYTES"),
        (
            {"DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS": "lots"},
            "DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS",
        ),
        (
            {"DIRECTORY_SEARCH_RATE_LIMIT_PORTAL": "5 per fortnight"},
            "DIRECTORY_SEARCH_RATE_LIMIT_PORTAL",
        ),
        ({"DIRECTORY_RATE_LIMIT_STORAGE_URL": "memcached://x"}, "DIRECTORY_RATE_LIMIT_STORAGE_URL"),
        ({"DIRECTORY_TRUSTED_PROXIES": "-1"}, "DIRECTORY_TRUSTED_PROXIES"),
        ({"DIRECTORY_SEARCH_DATABASE_URL": "mysql://x/y"}, "DIRECTORY_SEARCH_DATABASE_URL"),
        (
            {"DIRECTORY_DATABASE_URL": "postgresql+psycopg2://u@db/d"},
            "DIRECTORY_DATABASE_URL",
        ),
        (
            {"DIRECTORY_SEARCH_DATABASE_URL": "postgresql+asyncpg://u@replica/d"},
            "DIRECTORY_SEARCH_DATABASE_URL",
        ),
        ({"DIRECTORY_DATABASE_URL": "postgresql://u@db:port/d"}, "DIRECTORY_DATABASE_URL"),
        (
            {"DIRECTORY_SEARCH_ENGINE": "meilisearch", "DIRECTORY_MEILISEARCH_URL": ""},
            "DIRECTORY_MEILISEARCH_URL",
        ),
        (
            {"DIRECTORY_SEARCH_ENGINE": "meilisearch", "DIRECTORY_MEILISEARCH_URL": "meili:7700"},
            "DIRECTORY_MEILISEARCH_URL",
        ),
        (
            {
                "DIRECTORY_SEARCH_ENGINE": "meilisearch",
                "DIRECTORY_MEILISEARCH_URL": "http://meili:port",
            },
            "DIRECTORY_MEILISEARCH_URL",
        ),
    ],
    ids=[
        "non-int-ttl",
        "fractional-ttl",
        "empty-pool-size",
        "unknown-environment",
        "unknown-search-engine",
        "mysql-url",
        "sqlite-url",
        "default-ttl-above-max",
        "zero-ttl",
        "tiny-request-limit",
        "unreadable-anonymous-limit",
        "unknown-limit-period",
        "unsupported-limit-store",
        "negative-proxy-count",
        "mysql-search-replica",
        "driver-not-installed",
        "replica-driver-not-installed",
        "unreadable-database-port",
        "empty-meilisearch-url",
        "meilisearch-url-without-scheme",
        "meilisearch-url-with-a-bad-port",
    ],
)
def test_from_env_rejects_a_bad_value_naming_its_variable(environ, variable):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(environ)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        pytest.param(
            {"DIRECTORY_LOG_LEVEL": "LOUD"},
            "DIRECTORY_LOG_LEVEL",
            id="unknown-log-level",
        ),
        pytest.param(
            {"DIRECTORY_DB_POOL_SIZE": "-1"},
            "DIRECTORY_DB_POOL_SIZE",
            id="negative-pool-size",
        ),
        pytest.param(
            {"DIRECTORY_SYNC_SESSION_TTL_HOURS": "0"},
            "DIRECTORY_SYNC_SESSION_TTL_HOURS",
            id="zero-sync-session-ttl",
        ),
        # Each value broke requests or the worker once accepted.
        pytest.param(
            {"DIRECTORY_DB_STATEMENT_TIMEOUT_MS": "2147483648"},
            "DIRECTORY_DB_STATEMENT_TIMEOUT_MS",
            id="statement-timeout-past-postgresql-int",
        ),
        pytest.param(
            {"DIRECTORY_SEARCH_STATEMENT_TIMEOUT_MS": "0"},
            "DIRECTORY_SEARCH_STATEMENT_TIMEOUT_MS",
            id="no-search-statement-timeout",
        ),
        pytest.param(
            {"DIRECTORY_AD_DEFAULT_TTL_DAYS": "3000000", "DIRECTORY_AD_MAX_TTL_DAYS": "3000000"},
            "DIRECTORY_AD_(DEFAULT|MAX)_TTL_DAYS",
            id="ad-expiry-past-year-9999",
        ),
        pytest.param(
            {"DIRECTORY_AD_MAX_TTL_DAYS": "1000000000"},
            "DIRECTORY_AD_MAX_TTL_DAYS",
            id="ad-lifetime-past-timedelta",
        ),
        pytest.param(
            {"DIRECTORY_SYNC_SESSION_TTL_HOURS": "100000000"},
            "DIRECTORY_SYNC_SESSION_TTL_HOURS",
            id="sync-session-past-year-9999",
        ),
        pytest.param(
            {"DIRECTORY_RELAY_RETENTION_DAYS": "100000000000"},
            "DIRECTORY_RELAY_RETENTION_DAYS",
            id="retention-past-timedelta",
        ),
        pytest.param(
            {"DIRECTORY_DELIVERY_GIVE_UP_AFTER_HOURS": "1e300"},
            "DIRECTORY_DELIVERY_GIVE_UP_AFTER_HOURS",
            id="give-up-past-timedelta",
        ),
    ],
)
def test_from_env_rejects_out_of_range_operational_values(environ, variable):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(environ)


def test_plain_postgresql_url_is_normalised_to_the_psycopg_driver():
    settings = Settings.from_env({"DIRECTORY_DATABASE_URL": "postgresql://u@db.example:5432/d"})

    assert settings.database_url == "postgresql+psycopg://u@db.example:5432/d"


def test_production_with_meilisearch_and_no_key_refuses_to_start():
    with pytest.raises(SettingsError, match="DIRECTORY_MEILISEARCH_KEY"):
        Settings.from_env(
            {
                "DIRECTORY_ENVIRONMENT": "production",
                "DIRECTORY_DATABASE_URL": "postgresql://directory:secret@db/directory",
                "DIRECTORY_SEARCH_ENGINE": "meilisearch",
            }
        )


def test_a_database_url_refused_is_not_shown_since_it_may_hold_a_password():
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"DIRECTORY_DATABASE_URL": "postgresql://u:hunter2@db:port/d"})

    assert "hunter2" not in str(refused.value)


def test_the_meilisearch_url_is_not_checked_when_postgresql_searches():
    settings = Settings.from_env({"DIRECTORY_MEILISEARCH_URL": ""})

    assert settings.search_engine == "postgres"


def test_development_with_meilisearch_and_no_key_is_allowed():
    settings = Settings.from_env({"DIRECTORY_SEARCH_ENGINE": "meilisearch"})

    assert settings.meilisearch_key == ""


def test_the_longest_meilisearch_index_name_can_hold_its_feed_position(migrated):
    name = "i" * MEILISEARCH_INDEX_MAX_CHARS
    assert Settings.from_env({"DIRECTORY_MEILISEARCH_INDEX": name}).meilisearch_index == name
    wiring = build_wiring(migrated)
    try:
        with unit_of_work(wiring.session_factory) as session:
            store_position(session, index_name=name, feed_cursor="f1.MC4w")
            assert load_position(session, index_name=name) == "f1.MC4w"
            session.rollback()
    finally:
        wiring.close()


def test_from_env_refuses_a_meilisearch_index_name_too_long_to_store_its_position():
    with pytest.raises(SettingsError, match="DIRECTORY_MEILISEARCH_INDEX must be 1 to 64"):
        Settings.from_env({"DIRECTORY_MEILISEARCH_INDEX": "i" * (MEILISEARCH_INDEX_MAX_CHARS + 1)})


def test_settings_are_frozen():
    settings = Settings()

    with pytest.raises(AttributeError):
        settings.environment = "production"  # type: ignore[misc]


def test_production_refuses_to_start_on_the_default_database_url():
    with pytest.raises(SettingsError, match="DIRECTORY_DATABASE_URL"):
        Settings.from_env({"DIRECTORY_ENVIRONMENT": "production"})


def test_production_refuses_to_count_rate_limits_per_process():
    with pytest.raises(SettingsError, match="DIRECTORY_RATE_LIMIT_STORAGE_URL"):
        Settings.from_env(
            {
                "DIRECTORY_ENVIRONMENT": "production",
                "DIRECTORY_DATABASE_URL": "postgresql://directory:secret@db/directory",
            }
        )


PRODUCTION = {
    "DIRECTORY_ENVIRONMENT": "production",
    "DIRECTORY_DATABASE_URL": URL,
    "DIRECTORY_RATE_LIMIT_STORAGE_URL": "redis://cache.internal:6379/0",
}


def test_production_retries_deliveries_for_at_least_three_days():
    with pytest.raises(SettingsError, match="DIRECTORY_DELIVERY_GIVE_UP_AFTER_HOURS"):
        Settings.from_env({**PRODUCTION, "DIRECTORY_DELIVERY_GIVE_UP_AFTER_HOURS": "71.9"})
    settings = Settings.from_env({**PRODUCTION, "DIRECTORY_DELIVERY_GIVE_UP_AFTER_HOURS": "72"})
    assert settings.delivery_give_up_after_hours == 72
    assert Settings.from_env(PRODUCTION).delivery_give_up_after_hours == 72


def test_a_full_resync_of_a_portal_at_the_default_limit_fits_in_one_sync_session():
    settings = Settings()

    assert settings.portal_max_ads <= settings.sync_session_max_items


def test_every_numeric_setting_has_a_range():
    numeric = {
        field.name for field in dataclasses.fields(Settings) if field.type in ("int", "float")
    }

    assert set(NUMERIC_RANGES) == numeric


def _out_of_range(name: str, minimum: float, maximum: float) -> list[str]:
    if name in FLOAT_SETTINGS:
        return ["0", "-1", str(maximum * 2), "1e300", "inf", "-inf", "nan"]
    return [str(minimum - 1), str(maximum + 1), str(2**63)]


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        pytest.param(f"DIRECTORY_{name.upper()}", raw, id=f"{name}={raw}")
        for name, (minimum, maximum) in NUMERIC_RANGES.items()
        for raw in _out_of_range(name, minimum, maximum)
    ],
)
def test_from_env_refuses_a_number_out_of_its_range_naming_the_variable(variable, raw):
    with pytest.raises(SettingsError, match=f"{variable} must be between .+, not"):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize(
    "variable", ["DIRECTORY_SEARCH_RATE_LIMIT_ANONYMOUS", "DIRECTORY_SEARCH_RATE_LIMIT_PORTAL"]
)
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("0 per minute", id="refuses-every-search"),
        pytest.param("10 per second; 0 per hour", id="one-of-several-refuses-every-search"),
        pytest.param("1 per 10000 years", id="window-longer-than-a-year"),
    ],
)
def test_from_env_refuses_a_rate_limit_no_search_could_use(variable, raw):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})


def test_from_env_accepts_a_rate_limit_per_year():
    settings = Settings.from_env({"DIRECTORY_SEARCH_RATE_LIMIT_PORTAL": "1000000 per year"})

    assert settings.search_rate_limit_portal == "1000000 per year"


def _largest_of_each() -> dict[str, str]:
    return {
        f"DIRECTORY_{name.upper()}": str(maximum) for name, (_, maximum) in NUMERIC_RANGES.items()
    }


def test_from_env_accepts_the_largest_value_of_each_setting():
    settings = Settings.from_env(_largest_of_each())

    for name, (_, maximum) in NUMERIC_RANGES.items():
        assert getattr(settings, name) == maximum


def test_the_largest_values_work_where_they_are_used(migrated):
    largest = Settings.from_env(_largest_of_each())
    settings = dataclasses.replace(
        migrated, **{name: getattr(largest, name) for name in NUMERIC_RANGES}
    )
    wiring = build_wiring(settings)
    try:
        with wiring.engine.connect() as connection:
            timeout = connection.execute(text("SHOW statement_timeout")).scalar_one()
        assert timeout == "2147483647ms"
        now = datetime.now(UTC)
        assert now + wiring.lifetimes.maximum < datetime.max.replace(tzinfo=UTC)
        assert now + wiring.sync_session_ttl < datetime.max.replace(tzinfo=UTC)
        housekeeping(wiring)  # give-up period and retention, against the database
        deliverer = Deliverer(wiring, threading.Event())
        deliverer.pool.shutdown()
        assert deliverer.policy.give_up_after == timedelta(days=30)
        assert deliverer.policy.lease == timedelta(days=30)
    finally:
        wiring.close()


def test_settings_are_shown_without_passwords_or_keys():
    settings = Settings.from_env(
        {
            "DIRECTORY_DATABASE_URL": "postgresql://directory:db-s3cret@db.example/directory",
            "DIRECTORY_SEARCH_DATABASE_URL": "postgresql://reader:p@ss@replica.example/d",
            "DIRECTORY_RATE_LIMIT_STORAGE_URL": "redis://:redis-s3cret@cache.example:6379/0",
            "DIRECTORY_SEARCH_ENGINE": "meilisearch",
            "DIRECTORY_MEILISEARCH_KEY": "meili-s3cret",
        }
    )
    shown = repr(settings)
    for secret in ("db-s3cret", "p@ss", "redis-s3cret", "meili-s3cret"):
        assert secret not in shown
    assert "database_url='postgresql+psycopg://directory:***@db.example/directory'" in shown
    assert "search_database_url='postgresql+psycopg://reader:***@replica.example/d'" in shown
    assert "rate_limit_storage_url='redis://:***@cache.example:6379/0'" in shown
    assert "meilisearch_key='***'" in shown
    assert "meilisearch_url='http://127.0.0.1:7700'" in shown  # no password: as it is
    assert settings.database_url.endswith("db-s3cret@db.example/directory")  # only hidden


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"DIRECTORY_DATABASE_URL": "postgresql://u@db.example/d?connect_timout=5"},
            r"DIRECTORY_DATABASE_URL has an option PostgreSQL does not know \(connect_timout\)",
            id="database-option-misspelt",
        ),
        pytest.param(
            {"DIRECTORY_SEARCH_DATABASE_URL": "postgresql://u@replica.example/d?foo=bar"},
            r"DIRECTORY_SEARCH_DATABASE_URL has an option PostgreSQL does not know \(foo\)",
            id="replica-option-unknown",
        ),
        pytest.param(
            {"DIRECTORY_DATABASE_URL": "postgresql://u:pw@db.example:99999/d"},
            "DIRECTORY_DATABASE_URL must have a port between 1 and 65535",
            id="database-port-out-of-range",
        ),
        pytest.param(
            {"DIRECTORY_DATABASE_URL": "postgresql://u@db.example"},
            "DIRECTORY_DATABASE_URL must name the database",
            id="database-not-named",
        ),
        pytest.param(
            {"DIRECTORY_DATABASE_URL": "postgresql://"},
            "DIRECTORY_DATABASE_URL must name the database",
            id="database-url-empty-but-for-its-scheme",
        ),
        pytest.param(
            {"DIRECTORY_RATE_LIMIT_STORAGE_URL": "redis://cache.example:port/0"},
            r"DIRECTORY_RATE_LIMIT_STORAGE_URL could not be read \(Port could not be cast",
            id="redis-port-no-number",
        ),
        pytest.param(
            {"DIRECTORY_RATE_LIMIT_STORAGE_URL": "redis://cache.example:70000/0"},
            r"DIRECTORY_RATE_LIMIT_STORAGE_URL could not be read \(Port out of range",
            id="redis-port-out-of-range",
        ),
        pytest.param(
            {"DIRECTORY_RATE_LIMIT_STORAGE_URL": "redis://cache.example:6379/0?timeout=1"},
            r"DIRECTORY_RATE_LIMIT_STORAGE_URL has an option Redis connections do not take "
            r"\(timeout\)",
            id="redis-option-unknown",
        ),
        pytest.param(
            {"DIRECTORY_RATE_LIMIT_STORAGE_URL": "redis://cache.example:6379/0?socket_timeout=x"},
            "DIRECTORY_RATE_LIMIT_STORAGE_URL could not be read",
            id="redis-option-value-unreadable",
        ),
        pytest.param(
            {"DIRECTORY_RATE_LIMIT_STORAGE_URL": "redis://cache.example:6379/counters"},
            "DIRECTORY_RATE_LIMIT_STORAGE_URL must name the Redis database by its number",
            id="redis-database-by-name",
        ),
        pytest.param({"DIRECTORY_DB_POOL_SIZE": "1_0"}, "must be a whole number", id="int-1_0"),
        pytest.param({"DIRECTORY_DB_POOL_SIZE": " 5"}, "must be a whole number", id="int-space"),
        pytest.param(
            {"DIRECTORY_DB_POOL_SIZE": "\u0665"}, "must be a whole number", id="int-arabic"
        ),
        pytest.param(
            {"DIRECTORY_DELIVERY_LEASE_S": "6_0"}, "must be a number", id="float-underscore"
        ),
    ],
)
def test_from_env_refuses_a_value_that_would_fail_or_mislead_once_used(environ, message):
    """Each of these was accepted: the first connection then failed with a traceback, every
    API process failed to start or every search answered 500, or the value meant another
    than it seemed ("1_0" was 10, a Redis database by name was database 0)."""
    with pytest.raises(SettingsError, match=message) as refused:
        Settings.from_env(environ)

    assert "pw@" not in str(refused.value)


@pytest.mark.parametrize(
    "environ",
    [
        {"DIRECTORY_DATABASE_URL": "postgresql://u:p@db.example:6432/d?sslmode=require"},
        {"DIRECTORY_DATABASE_URL": "postgresql:///directory?host=/var/run/postgresql"},
        {"DIRECTORY_DATABASE_URL": "postgresql://u@db.example/?dbname=directory"},
        {
            "DIRECTORY_RATE_LIMIT_STORAGE_URL": "rediss://:pw@cache.example:6380/2?ssl_cert_reqs=none"
        },
        {"DIRECTORY_RATE_LIMIT_STORAGE_URL": "redis://cache.example"},
        {"DIRECTORY_DELIVERY_LEASE_S": "1.5e2"},
        {"DIRECTORY_DELIVERY_LEASE_S": ".5"},
    ],
    ids=lambda environ: next(iter(environ.values())),
)
def test_from_env_accepts_the_forms_libpq_and_redis_read(environ):
    Settings.from_env(environ)


# Values of libpq's options that it reads only when it connects: until then these were
# accepted, and the first connection failed with a driver traceback.
LIBPQ_OPTION_VALUES_ACCEPTED = [
    *(
        ("sslmode", value)
        for value in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
    ),
    *(("gssencmode", value) for value in ("disable", "prefer", "require")),
    *(("channel_binding", value) for value in ("disable", "prefer", "require")),
    *(
        ("target_session_attrs", value)
        for value in ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
    ),
    *(("load_balance_hosts", value) for value in ("disable", "random")),
    *(("sslcertmode", value) for value in ("disable", "allow", "require")),
    *(("sslnegotiation", value) for value in ("postgres", "direct")),
    ("connect_timeout", "0"),
    ("connect_timeout", "2147483647"),
    ("keepalives", "0"),
    ("keepalives", "1"),
    ("keepalives_idle", "1"),
    ("keepalives_idle", "32767"),
    ("keepalives_interval", "1"),
    ("keepalives_interval", "32767"),
    ("keepalives_count", "1"),
    ("keepalives_count", "127"),
    ("tcp_user_timeout", "0"),
    ("tcp_user_timeout", "2147483647"),
]
SSLMODES = "one of disable, allow, prefer, require, verify-ca, verify-full"
SECONDS = "a whole number between 0 and 2147483647"
KEEPALIVE_SECONDS = "a whole number between 1 and 32767"
# Each refused by libpq, or by psycopg (connect_timeout), or by Linux (the keepalives'
# durations and count) when connecting.
LIBPQ_OPTION_VALUES_MISTYPED = [
    pytest.param("sslmode", "bogus", SSLMODES, id="sslmode=bogus"),
    pytest.param("sslmode", "Require", SSLMODES, id="sslmode=Require"),
    pytest.param("gssencmode", "yes", "one of disable, prefer, require", id="gssencmode=yes"),
    pytest.param(
        "channel_binding",
        "required",
        "one of disable, prefer, require",
        id="channel_binding=required",
    ),
    pytest.param(
        "target_session_attrs",
        "readwrite",
        "one of any, read-write, read-only, primary, standby, prefer-standby",
        id="target_session_attrs=readwrite",
    ),
    pytest.param(
        "load_balance_hosts", "true", "one of disable, random", id="load_balance_hosts=true"
    ),
    pytest.param(
        "sslcertmode", "verify", "one of disable, allow, require", id="sslcertmode=verify"
    ),
    pytest.param("sslnegotiation", "tls", "one of postgres, direct", id="sslnegotiation=tls"),
    pytest.param("connect_timeout", "10s", SECONDS, id="connect_timeout=10s"),
    pytest.param("keepalives", "on", "a whole number between 0 and 1", id="keepalives=on"),
    pytest.param("keepalives_idle", "1min", KEEPALIVE_SECONDS, id="keepalives_idle=1min"),
    pytest.param("keepalives_idle", "0", KEEPALIVE_SECONDS, id="keepalives_idle=0"),
    pytest.param("keepalives_interval", "x", KEEPALIVE_SECONDS, id="keepalives_interval=x"),
    pytest.param("keepalives_interval", "32768", KEEPALIVE_SECONDS, id="keepalives_interval=32768"),
    pytest.param(
        "keepalives_count",
        "three",
        "a whole number between 1 and 127",
        id="keepalives_count=three",
    ),
    pytest.param(
        "keepalives_count", "128", "a whole number between 1 and 127", id="keepalives_count=128"
    ),
    pytest.param("tcp_user_timeout", "5000ms", SECONDS, id="tcp_user_timeout=5000ms"),
]


@pytest.mark.parametrize("variable", ["DIRECTORY_DATABASE_URL", "DIRECTORY_SEARCH_DATABASE_URL"])
@pytest.mark.parametrize(("option", "value", "expected"), LIBPQ_OPTION_VALUES_MISTYPED)
def test_from_env_refuses_a_libpq_option_value_that_fails_the_first_connection(
    variable, option, value, expected
):
    url = f"postgresql://u:s3cret@db.example:5432/d?{option}={value}"
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: url})

    assert str(refused.value) == f"{variable}'s {option} must be {expected}"
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        pytest.param("connect_timeout", "-1", id="connect_timeout=-1"),  # none at all
        pytest.param("connect_timeout", "1.5", id="connect_timeout=1.5"),  # 2 s
        pytest.param("connect_timeout", "%205", id="connect_timeout-with-a-space"),
        pytest.param("connect_timeout", "2147483648", id="connect_timeout-past-an-int"),
        pytest.param("keepalives", "2", id="keepalives=2"),  # on
        pytest.param("tcp_user_timeout", "-1", id="tcp_user_timeout=-1"),  # the system's
    ],
)
def test_from_env_refuses_a_libpq_number_spelt_otherwise_than_it_is_read(option, value):
    """libpq or psycopg read these, but a value spelt so is a typo more likely than what
    it is read as."""
    with pytest.raises(SettingsError, match=f"DIRECTORY_DATABASE_URL's {option} must be"):
        Settings.from_env(
            {"DIRECTORY_DATABASE_URL": f"postgresql://u@db.example/d?{option}={value}"}
        )


@pytest.mark.parametrize(("option", "value"), LIBPQ_OPTION_VALUES_ACCEPTED)
def test_from_env_accepts_each_value_libpq_takes(option, value):
    url = f"postgresql://u@db.example/d?{option}={value}"
    settings = Settings.from_env({"DIRECTORY_DATABASE_URL": url})

    assert settings.database_url == url.replace("postgresql://", "postgresql+psycopg://")


@pytest.mark.parametrize(
    "options",
    [
        "sslmode=require&sslmode=bogus",
        "sslmode=disable&sslmode=disable",
        "connect_timeout=5&connect_timeout=5",
    ],
)
def test_from_env_refuses_a_libpq_option_given_twice(options):
    """libpq reads the last value, which the settings checked; the engine passes them
    all, as one value that no option takes."""
    url = f"postgresql://u:s3cret@db.example/d?{options}"
    option = options.partition("=")[0]
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"DIRECTORY_SEARCH_DATABASE_URL": url})

    assert str(refused.value) == (
        f"DIRECTORY_SEARCH_DATABASE_URL gives {option} more than once: give it once"
    )
    assert "s3cret" not in str(refused.value)


def test_the_engine_cannot_connect_with_a_libpq_option_given_twice(cluster):
    engine = make_engine(f"{cluster.admin_url()}?sslmode=disable&sslmode=disable")
    try:
        with pytest.raises(OperationalError, match="sslmode"), engine.connect():
            pass
    finally:
        engine.dispose()


def _refused_by_libpq(cluster, option: str, value: str) -> str | None:
    """Why libpq, psycopg or the system refused the option's value when connecting to the
    test cluster; None if it connected, or failed for another reason (no SSL, no standby)."""
    try:
        with psycopg.connect(cluster.admin_url(), **{option: value}):
            return None
    except psycopg.Error as error:
        refused = re.search(
            r'invalid \w+ value: "|invalid integer value|bad value for|setsockopt', str(error)
        )
        return str(error) if refused else None


@pytest.mark.parametrize(("option", "value"), LIBPQ_OPTION_VALUES_ACCEPTED)
def test_libpq_takes_each_option_value_the_settings_accept(cluster, option, value):
    assert _refused_by_libpq(cluster, option, value) is None


@pytest.mark.parametrize(("option", "value", "expected"), LIBPQ_OPTION_VALUES_MISTYPED)
def test_libpq_refuses_each_option_value_the_settings_refuse_as_mistyped(
    cluster, option, value, expected
):
    assert _refused_by_libpq(cluster, option, value) is not None


def test_production_leases_a_delivery_for_longer_than_sending_it_takes():
    # A lease that ends while the webhook is still being sent lets the next round (of
    # this worker or another) claim the delivery and send it again meanwhile.
    with pytest.raises(SettingsError, match="DIRECTORY_DELIVERY_LEASE_S must be at least 30"):
        Settings.from_env({**PRODUCTION, "DIRECTORY_DELIVERY_LEASE_S": "5"})
    settings = Settings.from_env({**PRODUCTION, "DIRECTORY_DELIVERY_LEASE_S": "30"})
    assert settings.delivery_lease_s == MIN_PRODUCTION_DELIVERY_LEASE_S == 30
    assert MIN_PRODUCTION_DELIVERY_LEASE_S > WEBHOOK_TOTAL_TIMEOUT_S + DELIVERY_POLL_S
