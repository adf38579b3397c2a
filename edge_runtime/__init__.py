"""Edge inference runtime: the device side.

Importing this package is cheap and never imports TensorFlow or torch. The embedding API lives in
``edge_runtime.api`` (``load``), the package format in ``edge_runtime.package``.
"""

__version__ = "0.1.0"
