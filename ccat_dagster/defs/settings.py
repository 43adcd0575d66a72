"""The settings of the Dagster side, from the environment: one typed object, read when asked.

``Settings.from_env()`` reads ``os.environ`` once and validates every value (a wrong one is an
error naming the variable, not a crash somewhere later). The definitions of a site read it when
they are built (``build_site_definitions``: a code location loads, ``ccat run-until-idle``
starts), so the intervals and the cron take effect at the next load; the sweep of temporaries
and ``ccat run-until-idle`` read it when they run. docs/configuration.md lists the variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

PREFIX = "CCAT_"


class SettingsError(ValueError):
    """An environment variable with a value the settings cannot use."""


class Settings(BaseModel):
    """Each field is the environment variable ``CCAT_<FIELD NAME IN CAPITALS>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: minimum seconds between ticks of each stage sensor (``<site>_<stage>_sensor``)
    sensor_interval_seconds: int = Field(30, ge=1)
    #: minimum seconds between ticks of ``<site>_buffer_monitor_sensor``
    monitor_interval_seconds: int = Field(60, ge=1)
    #: cron schedule of ``<site>_cleanup_schedule``
    cleanup_cron: str = "*/10 * * * *"
    #: temporaries last written before the oldest run in flight minus this are removed
    temp_sweep_margin_seconds: float = Field(600.0, ge=0)
    #: console log level of the runs ``ccat run-until-idle`` executes in-process
    run_log_level: str = "WARNING"
    #: minimum seconds between ticks of ``<site>_alert_sensor`` (docs/operations.md: alerts)
    alert_interval_seconds: int = Field(60, ge=1)
    #: incoming-webhook URL the alerts are POSTed to as JSON with a "text" field (Slack,
    #: Mattermost); empty: no webhook
    alert_webhook_url: SecretStr = SecretStr("")
    #: SMTP server of the alert e-mails; empty: no e-mail
    alert_smtp_host: str = ""
    alert_smtp_port: int = Field(25, ge=1, le=65535)
    alert_smtp_from: str = "ccat-dagster@localhost"
    #: recipients, comma-separated
    alert_smtp_to: str = ""
    alert_smtp_starttls: bool = False
    alert_smtp_user: str = ""
    alert_smtp_password: SecretStr = SecretStr("")
    #: the short name of the site whose code location ``ccat_dagster.sites.site`` loads
    site: str | None = None

    @field_validator("cleanup_cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("a cron expression has five fields, e.g. '*/10 * * * *'")
        return value

    @field_validator("run_log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("alert_webhook_url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        if url and not url.startswith(("http://", "https://")):
            raise ValueError("an http:// or https:// URL")
        return SecretStr(url)

    @property
    def alert_recipients(self) -> list[str]:
        return [a.strip() for a in self.alert_smtp_to.split(",") if a.strip()]

    @classmethod
    def _shown(cls, name: str, values: Mapping[str, str]) -> str:
        # a webhook URL or a password is a secret: an error names the variable, not its value
        if cls.model_fields[name].annotation is SecretStr:
            return "'***'"
        return repr(values.get(name))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings from ``environ`` (default ``os.environ``); unset variables keep their
        defaults. Raises SettingsError naming each variable with a bad value."""
        environ = os.environ if environ is None else environ
        values = {
            name: environ[f"{PREFIX}{name.upper()}"]
            for name in cls.model_fields
            if environ.get(f"{PREFIX}{name.upper()}", "").strip()
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{PREFIX}{str(err['loc'][0]).upper()}={cls._shown(str(err['loc'][0]), values)}: "
                f"{err['msg']}"
                for err in exc.errors()
            )
            raise SettingsError(f"invalid settings in the environment: {problems}") from None
