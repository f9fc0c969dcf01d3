"""The real tritonserver serving the shared gsv_sv model (speaker verification for v2Pro/v2ProPlus).

The repository holds only gsv_sv, exported from the kit-rule checkpoint of seed 0 (shared with the
SV conformance tests through the session fixture ``sv_build``). Checked over gRPC: the embedding
equals ``SVEmbedder`` run directly, bad requests get one-line INVALID_ARGUMENT errors, and the
model stays ready.
"""
from __future__ import annotations

import numpy as np
import pytest

from python_backend.speaker_verification import SVEmbedder
from tests.triton_fixtures import require_tritonserver, start_server

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def build(sv_build):
    require_tritonserver()
    return sv_build(0)


@pytest.fixture(scope="module")
def client(build, tmp_path_factory):
    server = start_server(build.repo, models=["gsv_sv"], log_dir=tmp_path_factory.mktemp("sv_logs"))
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    yield grpc
    grpc.close()
    server.stop()


def _request(client, array: np.ndarray, dtype: str = "FP32"):
    tensor = grpcclient.InferInput("WAV32K", list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return client.infer("gsv_sv", [tensor])


@pytest.mark.integration
def test_sv_emb_equals_the_embedder(build, client):
    embedder = SVEmbedder(build.graph)
    rng = np.random.default_rng(7)
    for samples in (800, 3 * 32000 + 17):
        wav = (rng.standard_normal(samples) * 0.1).astype(np.float32)
        got = _request(client, wav).as_numpy("SV_EMB")
        want = embedder.embed(wav)
        assert got.shape == (1, 20480) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5 * float(np.abs(want).max()), rtol=0)


@pytest.mark.integration
@pytest.mark.parametrize("array,dtype,text", [
    (np.zeros(799, np.float32), "FP32", "799 samples"),
    (np.array([0.0] * 900 + [np.nan], np.float32), "FP32", "NaN"),
    (np.zeros((2, 1600), np.float32), "FP32", "shape"),
    (np.zeros(1600, np.float64), "FP64", "expects 'FP32'"),
], ids=["short", "nan", "stereo", "fp64"])
def test_bad_request_one_line_invalid_argument(client, array, dtype, text):
    with pytest.raises(InferenceServerException) as info:
        _request(client, array, dtype)
    err = info.value
    assert err.status() == "StatusCode.INVALID_ARGUMENT", (err.status(), err.message())
    assert text in err.message() and "\n" not in err.message().strip() and "Traceback" not in err.message()
    assert client.is_model_ready("gsv_sv")
