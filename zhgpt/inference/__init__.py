"""Using a trained model: `zhgpt generate`, `zhgpt eval`, `zhgpt export` (Hugging Face, int8, ONNX)."""
