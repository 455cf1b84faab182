"""The localllm daemon: an OpenAI-compatible HTTP front end (FastAPI on uvicorn) over engine processes."""
