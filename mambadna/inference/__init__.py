"""The one no-grad inference engine (batching, chunking, precision, pooling, RC averaging) and the scores built on it."""
