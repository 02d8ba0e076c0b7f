"""Pipeline layer: job specs, clusters, tasks, planning and running a job on Dask."""
