"""Staging for processing: scientists' StagingJobs bring archived packages to a PROCESSING
location, unpacked.

- :mod:`.requests`: the jobs: create, complete, list, retention.
"""
