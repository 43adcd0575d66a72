"""Whether a location can take work.

- :mod:`.availability`: a location that does not answer is unavailable and probed with backoff;
- :mod:`.buffer_policy`: disk-usage samples, the buffer level they mean, and what it changes;
- :mod:`.admission`: work that writes into a buffer starts only when its space is free.
"""
