"""The pipeline that fills an index: scan, hash, decode, embed, write."""
