"""The one decode-and-embed path: image files or encoded bytes in, a vector or an error out, for each input.

- `decode`: reading, hashing and decoding one input (no torch, so that it can run before torch is loaded);
- `workers`: decoding in DataLoader worker processes, in batches;
- `read_ahead`: holding decoded batches while inference catches up;
- `embed`: inference over decoded batches, and `embed_batches` / `embed_sources`, the calls everyone makes.

Inputs (`Source`) and results (`SourceResult`) are plain data, so that they can cross a process boundary: the local
index pipeline, a query, calibration, classification, the benchmarks, a Ray actor and a server all call this.
"""
