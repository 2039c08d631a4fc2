"""What simsearch decides from distances: the threshold (`calibration`, `calibration_data`, `index_calibration`),
duplicate groups and which image keeps (`dedup`, `keeper_rules`, `photo_facts`, `pixel_rule`, `lookalikes`,
`false_pairs`), acting on them undoably (`moves`), dedup of samples and shards (`sample_groups`, `sample_store`,
`deduplicator`, `manifest`, `shard_dedup`, `ray_dedup`), and few-shot classification (`classify`).
"""
