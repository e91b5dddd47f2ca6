"""`python -m runwire.upload_worker PARENT_PID`: the child process that hashes and uploads a
run's artifacts (see runwire.artifacts._WorkerProcess). A module of its own, so runpy does not
execute runwire.artifacts a second time as __main__."""

import sys

from runwire.artifacts import _worker_main

if __name__ == "__main__":
    sys.exit(_worker_main())
