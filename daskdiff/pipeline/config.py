"""Pipeline layer: daskdiff's defaults in Dask's configuration (``daskdiff.*`` keys).

The packaged ``daskdiff/daskdiff.yaml`` is merged into ``dask.config`` under what the user configured, as
dask-jobqueue does with ``jobqueue.yaml``: ``~/.config/dask/*.yaml``, ``DASK_DASKDIFF__*``
environment variables and ``dask.config.set`` all override it. Read a value with
``dask.config.get("daskdiff.worker-ttl")``.
"""

from __future__ import annotations

from pathlib import Path

import dask.config
import yaml

DEFAULTS_FILE = Path(__file__).parent.parent / "daskdiff.yaml"

with open(DEFAULTS_FILE) as _f:
    dask.config.update_defaults(yaml.safe_load(_f))
