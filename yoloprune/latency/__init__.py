"""ONNX Runtime latency: export and timing (bench), and the latency model a budget projects with."""
