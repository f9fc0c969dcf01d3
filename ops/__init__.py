"""Operations: running and operating a deployment (tritonserver launcher, control service,
publish/rollback/canary/promote/versions, the client, the CLI, the quickstart).

The exporter (checkpoints → versioned ONNX graphs) is ``export/``; what runs inside Triton is
``python_backend/``.
"""
