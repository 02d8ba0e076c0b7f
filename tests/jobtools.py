"""Helpers for job tests: small specs on the tiny model, and a worker-killing plugin."""

from __future__ import annotations

import logging
import os
import threading

from distributed import WorkerPlugin

from daskdiff.pipeline.spec import parse_spec


def tiny_spec(model_path, sets, output, **overrides):
    data = {
        "name": "tiny",
        "model": {"name": model_path, "weights": "file"},
        "image_sets": {name: folder for name, folder in sets.items()},
        "analysis": {
            "substrates": ["units", "filter_mean"],
            "n_units": [5, "all"],
            "repeats": 6,
            "repeats_per_task": 4,
            "normalize": "zscore",
            "per_unit": True,
            "seed": 3,
        },
        "extraction": {"batch_size": 4, "shard_size": 3},
        "output": str(output),
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return parse_spec(data, "test-spec")


class KillOnce(WorkerPlugin):
    """Kill this worker process (os._exit) shortly after it starts the first task whose key
    contains ``match``; a marker file makes sure only one worker, once, dies."""

    name = "test-kill-once"

    def __init__(self, match: str, marker: str, delay: float = 0.02):
        self.match, self.marker, self.delay = match, marker, delay

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or self.match not in str(key):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(key).encode())
        os.close(fd)
        threading.Timer(self.delay, os._exit, args=(1,)).start()


class _BuildCounter(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.builds = 0

    def emit(self, record):
        if record.getMessage().startswith("built model"):
            self.builds += 1


class CountModelBuilds(WorkerPlugin):
    """Count, in each worker, the model builds that daskdiff logs (logger ``daskdiff.model.build``)."""

    name = "test-count-model-builds"

    def setup(self, worker):
        log = logging.getLogger("daskdiff.model.build")
        log.setLevel(logging.INFO)
        worker.test_model_builds = _BuildCounter()
        log.addHandler(worker.test_model_builds)


def model_builds(dask_worker):
    """For ``client.run``: how many builds this worker logged since :class:`CountModelBuilds` was registered."""
    return dask_worker.test_model_builds.builds
