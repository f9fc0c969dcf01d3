"""`tts_stream` BLS model: thin adapter; the logic is in python_backend."""
from python_backend.triton_tts import TTSStreamModel as TritonPythonModel  # noqa: F401
