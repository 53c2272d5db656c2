"""Preloaded by the forkservers a tied curate process starts (`curate.procs.tie_children`): the forkserver dies
with that process, and every pool worker it forks dies with the forkserver and ignores SIGINT (a forkserver
gives its workers the signal handlers it had after its preloads); a worker whose pool was stopped while it
started exits without a traceback."""

import os
import sys

from curate import procs

procs.die_with_parent(os.getppid())
procs.tie_children()
sys.excepthook = procs.quiet_when_the_pool_is_gone
