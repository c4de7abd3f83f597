"""Sample models for graphopt: shipped digits classifiers, plain-torch builders and a zoo of third-party ONNX files."""
