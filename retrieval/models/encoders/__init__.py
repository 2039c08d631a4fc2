"""The backbones a model is built on: EfficientNet-Lite0 (`efficientnet_lite`) and the small CNN (`small_cnn`)."""
