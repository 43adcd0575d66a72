"""The settings of the Dagster side: one typed object read from the environment when the
definitions are built (not at import), with errors that name the variable."""

from __future__ import annotations

import pytest

from ccat_dagster.defs.definitions import build_site_definitions
from ccat_dagster.defs.settings import Settings, SettingsError


def test_defaults_without_variables():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.sensor_interval_seconds == 30
    assert settings.monitor_interval_seconds == 60
    assert settings.cleanup_cron == "*/10 * * * *"
    assert settings.temp_sweep_margin_seconds == 600.0
    assert settings.run_log_level == "WARNING"


def test_values_come_from_the_ccat_variables():
    settings = Settings.from_env(
        {
            "CCAT_SENSOR_INTERVAL_SECONDS": "5",
            "CCAT_MONITOR_INTERVAL_SECONDS": "7",
            "CCAT_CLEANUP_CRON": "* * * * *",
            "CCAT_TEMP_SWEEP_MARGIN_SECONDS": "0",
            "CCAT_RUN_LOG_LEVEL": "info",
            "CCAT_HOME": "/elsewhere",  # not a setting of this object: ignored
            "CCAT_CLEANUP_CRONTAB": "x",
        }
    )
    assert settings.sensor_interval_seconds == 5
    assert settings.monitor_interval_seconds == 7
    assert settings.cleanup_cron == "* * * * *"
    assert settings.temp_sweep_margin_seconds == 0.0
    assert settings.run_log_level == "INFO"


def test_empty_variables_keep_the_defaults():
    assert Settings.from_env({"CCAT_CLEANUP_CRON": " ", "CCAT_SENSOR_INTERVAL_SECONDS": ""}) == (
        Settings()
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CCAT_SENSOR_INTERVAL_SECONDS", "soon"),
        ("CCAT_SENSOR_INTERVAL_SECONDS", "0"),
        ("CCAT_MONITOR_INTERVAL_SECONDS", "-1"),
        ("CCAT_CLEANUP_CRON", "every ten minutes"),
        ("CCAT_TEMP_SWEEP_MARGIN_SECONDS", "-5"),
        ("CCAT_RUN_LOG_LEVEL", "LOUD"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable(name, value):
    with pytest.raises(SettingsError) as excinfo:
        Settings.from_env({name: value})
    assert name in str(excinfo.value)
    assert repr(value) in str(excinfo.value)


def test_settings_are_frozen():
    with pytest.raises(ValueError, match="frozen"):
        Settings().cleanup_cron = "* * * * *"


def test_definitions_read_the_environment_when_built_not_at_import(
    default_topology_db, monkeypatch
):
    from ccat_dagster.sites import site  # imported before the variables are set

    cologne = site.site_definitions("cologne")
    monkeypatch.setenv("CCAT_SENSOR_INTERVAL_SECONDS", "11")
    monkeypatch.setenv("CCAT_MONITOR_INTERVAL_SECONDS", "13")
    monkeypatch.setenv("CCAT_CLEANUP_CRON", "*/3 * * * *")
    defs = cologne()
    assert defs.resolve_sensor_def("cologne_data_transfer_sensor").minimum_interval_seconds == 11
    assert defs.resolve_sensor_def("cologne_buffer_monitor_sensor").minimum_interval_seconds == 13
    assert defs.resolve_schedule_def("cologne_cleanup_schedule").cron_schedule == "*/3 * * * *"


def test_definitions_take_an_explicit_settings_object(default_topology_db):
    settings = Settings(sensor_interval_seconds=2, cleanup_cron="0 * * * *")
    defs = build_site_definitions("us", ops_db_url=default_topology_db, settings=settings)
    assert defs.resolve_sensor_def("us_data_transfer_sensor").minimum_interval_seconds == 2
    assert defs.resolve_schedule_def("us_cleanup_schedule").cron_schedule == "0 * * * *"


def test_a_bad_value_stops_the_definitions_from_loading(default_topology_db, monkeypatch):
    monkeypatch.setenv("CCAT_CLEANUP_CRON", "never")
    with pytest.raises(SettingsError, match="CCAT_CLEANUP_CRON"):
        build_site_definitions("us", ops_db_url=default_topology_db)


def test_alert_channels_come_from_the_ccat_alert_variables():
    settings = Settings.from_env(
        {
            "CCAT_ALERT_INTERVAL_SECONDS": "15",
            "CCAT_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hooks/token",
            "CCAT_ALERT_SMTP_HOST": "127.0.0.1",
            "CCAT_ALERT_SMTP_PORT": "2525",
            "CCAT_ALERT_SMTP_TO": "a@example.org,b@example.org",
            "CCAT_ALERT_SMTP_PASSWORD": "hunter2",
        }
    )
    assert settings.alert_interval_seconds == 15
    assert settings.alert_webhook_url.get_secret_value() == "http://127.0.0.1:9/hooks/token"
    assert settings.alert_smtp_port == 2525
    assert settings.alert_recipients == ["a@example.org", "b@example.org"]
    # secrets never show in a repr (a log line, an error)
    assert "token" not in repr(settings)
    assert "hunter2" not in repr(settings)


def test_a_bad_webhook_url_is_an_error_that_does_not_show_it():
    with pytest.raises(SettingsError, match="CCAT_ALERT_WEBHOOK_URL='\\*\\*\\*'") as excinfo:
        Settings.from_env({"CCAT_ALERT_WEBHOOK_URL": "hooks.example.org/secret"})
    assert "secret" not in str(excinfo.value)


def test_every_site_has_its_alert_sensors(default_topology_db):
    settings = Settings(alert_interval_seconds=17)
    defs = build_site_definitions("cologne", ops_db_url=default_topology_db, settings=settings)
    assert defs.resolve_sensor_def("cologne_alert_sensor").minimum_interval_seconds == 17
    assert defs.resolve_sensor_def("cologne_run_failure_alert_sensor")
