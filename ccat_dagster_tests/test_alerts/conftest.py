"""The alert tests name the receivers of ``ccat_dagster_tests.fixtures.alert_receivers`` short."""

from __future__ import annotations

import pytest


@pytest.fixture
def webhook(alert_webhook):
    return alert_webhook


@pytest.fixture
def smtp(alert_smtp):
    return alert_smtp


@pytest.fixture
def channels(alert_channels):
    return alert_channels
