"""Laptop side: load a trained model, quantize it for a device profile, check accuracy, write a signed package.

Heavy libraries (TensorFlow, tf2onnx, skl2onnx, torch) are imported inside the functions that need them.
"""
