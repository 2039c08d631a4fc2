"""The index database: its schema, backends and every write, private to `retrieval.index.SimilarityIndex`; and
what others may use, the plain records it takes and gives (`records`) and the FAISS index over stored vectors
(`vector_index`).
"""
