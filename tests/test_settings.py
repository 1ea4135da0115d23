"""Settings come from DIRECTORY_* variables, are validated once, and a bad value stops
the start with a message naming the variable."""

from __future__ import annotations

import pytest

from directory.settings import Settings, SettingsError

URL = "postgresql+psycopg://directory@db.example:5432/directory"


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
            "DIRECTORY_DB_POOL_SIZE": "12",
        }
    )

    assert settings.ad_default_ttl_days == 30
    assert settings.ad_max_ttl_days == 60
    assert settings.max_request_bytes == 2048
    assert settings.sync_session_ttl_hours == 6
    assert settings.db_pool_size == 12


def test_from_env_ignores_other_variables_and_keeps_defaults():
    assert Settings.from_env({"PATH": "/usr/bin", "HOME": "/root"}) == Settings()


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


def test_development_with_meilisearch_and_no_key_is_allowed():
    settings = Settings.from_env({"DIRECTORY_SEARCH_ENGINE": "meilisearch"})

    assert settings.meilisearch_key == ""


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
