"""`tts` BLS model: thin adapter; the logic is in python_backend."""
from python_backend.triton_tts import TTSModel as TritonPythonModel  # noqa: F401
