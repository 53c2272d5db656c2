"""Errors every stage may raise that the command line reports in one line."""


class RunStopped(RuntimeError):
    """A run that stopped before the end (a server gone, a signal); what finished is kept and running
    the same command again resumes it. The command exits 1."""
