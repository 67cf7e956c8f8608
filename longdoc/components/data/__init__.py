"""The data stages: `readers` (every container and format, hostile-input safe), `ingest`
(archives -> deduplicated Parquet corpus) and `tokenize` (corpus -> Arrow token shards).
May import `core`."""
