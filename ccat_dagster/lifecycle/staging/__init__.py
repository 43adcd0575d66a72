"""Staging for processing: scientists' StagingJobs bring archived packages to a PROCESSING
location, unpacked.

- :mod:`.requests`: the jobs: validate and create, complete, list, retention;
- :mod:`.execution`: staging one package for the open jobs that want it (stream from the nearest
  verified archive copy, unpack, verify, record; restore what went missing).
"""
