"""Inference on ONNX Runtime shared by predict.py and the REST API, plus ONNX export. No prefect, no mlflow."""
