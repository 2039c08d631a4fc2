"""Vectors and the search over them: the distance simsearch reports (`unit_distance`) and in-batch distance
matrices (`distances`), FAISS indexes from a factory description (`faiss_factory`), an index's FAISS cache
(`vector_cache`) and its tuning (`vector_tuning`), a query (`search`), and close pairs at scale
(`neighbour_graph`, `partitioned_pairs`, `stored_vectors`).
"""
