"""Storage layer: files and folders (atomic writes, the output layout, shards, partials, results, images)."""
