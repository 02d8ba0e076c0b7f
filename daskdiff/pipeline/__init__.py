"""Pipeline layer: job specs, clusters, tasks, planning and running a job on Dask."""

from . import config  # noqa: F401  (daskdiff.* defaults merged into dask.config on import, as dask-jobqueue does)
