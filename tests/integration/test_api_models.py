"""Models endpoints over real HTTP (uvicorn) against moto."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration
M = "/api/v1/llm/models"
SEED_BODY = {
    "model_id": "llama-2-7b",
    "architecture": "llama",
    "parameter_count": 7000000000,
    "quantization": "Q4_K_M",
    "gguf_path": "/models/llama-2-7b-Q4.gguf",
    "description": "Llama 2 7B model with Q4 quantization",
    "metadata": {"context_length": 4096, "vocab_size": 32000},
}


def _problem(resp, status, error=None):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["type"].startswith("urn:") and body["title"]
    assert "detail" not in body
    if error:
        assert body["error"] == error
    return body


def test_seed_register_get_list_delete(api):
    r = api("POST", M, json=SEED_BODY)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["model_id"] == "llama-2-7b" and body["status"] == "registered"
    assert body["timestamp"].endswith("Z") and body["file_status"] == "unverified"

    got = api("GET", f"{M}/llama-2-7b", scopes=("lora:read",)).json()
    assert got["architecture"] == "llama" and got["parameter_count"] == 7000000000
    assert got["metadata"] == {"context_length": 4096, "vocab_size": 32000}
    assert got["quantization"] == "Q4_K_M" and got["gguf_path"] == "/models/llama-2-7b-Q4.gguf"
    assert got["file_status"] == "unverified" and got["created_at"].endswith("Z")

    lst = api("GET", M, params={"architecture": "llama", "limit": 10}).json()
    assert lst["total"] == 1 and lst["limit"] == 10 and lst["offset"] == 0
    assert lst["models"][0]["model_id"] == "llama-2-7b"
    assert api("GET", M, params={"architecture": "mistral"}).json()["total"] == 0

    r = api("DELETE", f"{M}/llama-2-7b")
    assert r.status_code == 204 and r.content == b""
    _problem(api("GET", f"{M}/llama-2-7b"), 404, "Model not found")


def test_duplicate_model_is_409(api):
    assert api("POST", M, json=SEED_BODY).status_code == 201
    _problem(api("POST", M, json=SEED_BODY), 409, "Model already exists")


def test_register_reads_real_gguf_header(api, gemma_path):
    r = api(
        "POST",
        M,
        json={"model_id": "gemma-3-270m", "architecture": "gemma3", "gguf_path": str(gemma_path)},
    )
    assert r.status_code == 201, r.text
    assert r.json()["file_status"] == "verified"
    got = api("GET", f"{M}/gemma-3-270m").json()
    assert got["quantization"] == "Q4_K_M" and got["parameter_count"] == 268098176
    assert got["metadata"]["context_length"] == 32768 and got["metadata"]["vocab_size"] == 262144
    assert got["file_info"]["tensor_count"] == 236


@pytest.mark.parametrize(
    "field, value",
    [
        ("architecture", "llama"),
        ("quantization", "Q8_0"),
        ("parameter_count", 7_000_000_000),
        ("metadata", {"context_length": 4096}),
    ],
)
def test_declared_value_contradicting_file_is_400(api, gemma_path, field, value):
    body = {"model_id": "g", "architecture": "gemma3", "gguf_path": str(gemma_path), field: value}
    err = _problem(api("POST", M, json=body), 400, "Model file mismatch")
    assert err["errors"][0]["field"].endswith(field if field != "metadata" else "context_length")


def test_non_gguf_file_is_400(api, tmp_path):
    p = tmp_path / "not.gguf"
    p.write_bytes(b"this is not a model" * 100)
    err = _problem(
        api("POST", M, json={"model_id": "x", "architecture": "llama", "gguf_path": str(p)}),
        400,
        "Invalid model file",
    )
    assert "magic" in err["details"]


def test_s3_model_read_with_ranged_gets_and_verified_later(api, ctx, gemma_path):
    from lora_common.services import models

    uri = f"s3://{ctx.settings.bucket_name}/models/gemma.gguf"
    r = api("POST", M, json={"model_id": "gemma-s3", "architecture": "gemma3", "gguf_path": uri})
    assert r.json()["file_status"] == "unverified"  # not uploaded yet
    ctx.blobs.upload_file(str(gemma_path), "models/gemma.gguf")
    calls = []
    original = ctx.blobs.read_range

    def spy(key, offset, length, bucket=None):
        calls.append(length)
        return original(key, offset, length, bucket=bucket)

    ctx.blobs.read_range = spy
    out = models.verify_model_file("gemma-s3", ctx=ctx)
    assert out["file_status"] == "verified"
    assert ctx.repo.get_model("gemma-s3")["file_info"]["quantization"] == "Q4_K_M"
    assert calls and sum(calls) < 16 * 1024 * 1024  # never the whole file


def test_invalid_model_file_blocks_adapter_creation(api, ctx, tmp_path, tenant):
    p = tmp_path / "m.gguf"
    p.write_bytes(b"later corrupted")
    ctx.repo.put_model(
        {
            "model_id": "bad",
            "architecture": "llama",
            "gguf_path": str(p),
            "file_status": "unverified",
            "file_info": {},
            "metadata": {},
            "created_at": "2026-01-01T00:00:00Z",
        }
    )
    from lora_common.services import models

    assert models.verify_model_file("bad", ctx=ctx)["file_status"] == "invalid"
    api(
        "POST",
        "/api/v1/llm/datasets",
        params={"dataset_id": "d"},
        content=b'{"prompt":"a","completion":"b"}',
        headers={"content-type": "application/x-ndjson"},
    )
    r = api(
        "POST",
        "/api/v1/llm/lora/adapters",
        json={"adapter_id": "x", "base_model": "bad", "training_data": {"dataset_id": "d"}},
    )
    _problem(r, 409, "Model file invalid")


def test_model_scopes(api):
    _problem(api("POST", M, json=SEED_BODY, scopes=("lora:write",)), 403, "Forbidden")
    assert api("POST", M, json=SEED_BODY).status_code == 201
    _problem(api("DELETE", f"{M}/llama-2-7b", scopes=("lora:write",)), 403)
    assert api("GET", f"{M}/llama-2-7b", scopes=("lora:read",)).status_code == 200


def test_delete_model_in_use_409_unless_cascade(api, ctx, ready_adapter, tenant):
    ready_adapter(tenant)
    _problem(api("DELETE", f"{M}/gemma-3-270m"), 409, "Model in use")
    assert ctx.blobs.list_keys(f"adapters/{tenant}/")
    assert api("DELETE", f"{M}/gemma-3-270m", params={"cascade": "true"}).status_code == 204
    assert ctx.repo.get_adapter(tenant, "themis_help_lora") is None
    assert ctx.blobs.list_keys(f"adapters/{tenant}/") == []


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"offset": -1}, "offset"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_pagination_bounds_are_400(api, params, field):
    err = _problem(api("GET", M, params=params), 400, "Validation failed")
    assert err["errors"][0]["field"] == field


def test_pagination_edges(api):
    for i in range(3):
        api("POST", M, json={**SEED_BODY, "model_id": f"m{i}"})
    page = api("GET", M, params={"limit": 2, "offset": 2}).json()
    assert [m["model_id"] for m in page["models"]] == ["m2"] and page["total"] == 3
    past = api("GET", M, params={"offset": 50}).json()
    assert past["models"] == [] and past["total"] == 3
    full = api("GET", M, params={"limit": 100}).json()
    assert len(full["models"]) == 3
