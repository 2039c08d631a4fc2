"""simsearch library core: encoders, losses, storage, search, calibration and metrics."""
