"""The ``ccat`` command (issue 13, the command line): one file per concern."""
