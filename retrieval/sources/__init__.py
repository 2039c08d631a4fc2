"""Image files and samples in, each a vector or an error out: finding the files (`scan`), what makes a file
the same file and its content (`file_identity`, `content_hash`), decoding (`images`, `raw_preview`, `decode`),
the one decode-and-embed path (`workers`, `read_ahead`, `embed`; a head start, `head_start`; on Ray,
`ray_embed`), shards (`shards`, `shard_samples`), labelled folders and CSV pairs (`labelled`, `pairs`,
`classes`), embeddings files (`embedding_files`, `imported_rows`), and the checks on what a caller hands
the library (`inputs`).

Inputs (`Source`) and results (`SourceResult`) are plain data, so that they can cross a process boundary: the
local index pipeline, a query, calibration, classification, the benchmarks, a Ray actor and a server all
call this.
"""
