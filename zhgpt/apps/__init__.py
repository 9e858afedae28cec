"""Front ends over the engine: the OpenAI-compatible API (`zhgpt serve`) and the Gradio demo (`zhgpt demo`)."""
