"""After training: predict, the inference graph, ONNX export and engine, timelines (the ONNX path imports no torch)."""
