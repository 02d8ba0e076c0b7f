"""Model layer: Keras models and weights, preprocessing, the extraction graph (one shard -> one file)."""
