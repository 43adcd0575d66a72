"""The long-term archives (stage 5) and the live checks of their copies.

- :mod:`.stage`: packages at an LTA-site buffer are copied into the site's archive;
- :mod:`.verification`: ``lta_presence``, the one place that looks at an archived object;
- :mod:`.repair`: archive copies that failed a check are marked LOST or BAD and copied again;
- :mod:`.reverification`: every archive copy is read back periodically (the scrub).
"""
