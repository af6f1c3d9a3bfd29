"""Faces: detection, 5-point landmarks, template alignment, recognition (insightface ONNX via onnxruntime).

Imports of insightface, onnxruntime, OpenCV and scikit-image happen inside the functions that need them.
"""
