"""The HTTP service beside `cli/`: the same library, the model loaded once."""
