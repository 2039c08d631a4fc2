"""The embedding model and how it is made: the model and its file (`model`, `model_spec`), running it
(`embedding`, `runtime_onnx`, `devices`, `allocator`), the pairwise head (`pair_head`), its backbones
(`encoders/`) and its training (`training/`, `losses/`, `miners`).
"""
