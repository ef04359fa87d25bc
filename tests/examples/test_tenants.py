"""examples/tenants.py: model files, the loader and cache, and the HTTP contract."""

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from deployment_server import MODEL_ID_HEADER, Serve

from examples.tenants import (
    EMBEDDING_SHAPE,
    FEATURES,
    InvalidTenantId,
    ModelFileError,
    TenantModels,
    TenantNotFound,
    ensure_models,
    generate_model,
    read_model,
    tenant_ids,
)
from replica import request_context

NUM_TENANTS = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    ensure_models(directory, NUM_TENANTS)
    return directory


@pytest.fixture
def deployment(model_dir: Path) -> TenantModels:
    return TenantModels(model_dir=str(model_dir), num_tenants=NUM_TENANTS)


def headers(model_id: str) -> dict[str, str]:
    return {MODEL_ID_HEADER: model_id}


def by_hand(tenant_id: str, features: dict[str, float]) -> float:
    document = generate_model(tenant_id)
    weights = document["weights"]
    bias = float(document["bias"])
    return bias + sum(float(weights[name]) * value for name, value in features.items())


def resident(deployment: TenantModels) -> list[str]:
    return [m.model_id for m in TenantModels.load_model.cache_for(deployment).state().models]


# -- model files ----------------------------------------------------------------------------


def test_model_files_are_created_once_and_then_reused(tmp_path: Path) -> None:
    directory = tmp_path / "models"
    TenantModels(model_dir=str(directory), num_tenants=3)
    paths = sorted(directory.iterdir())
    assert [p.name for p in paths] == ["tenant-01.json", "tenant-02.json", "tenant-03.json"]
    assert all(p.stat().st_size > 150_000 for p in paths)
    written_at = [p.stat().st_mtime_ns for p in paths]

    TenantModels(model_dir=str(directory), num_tenants=3)
    assert ensure_models(directory, 3) == []
    assert [p.stat().st_mtime_ns for p in sorted(directory.iterdir())] == written_at


def test_a_larger_num_tenants_adds_only_the_missing_files(tmp_path: Path) -> None:
    assert len(ensure_models(tmp_path, 2)) == 2
    assert [p.name for p in ensure_models(tmp_path, 3)] == ["tenant-03.json"]


def test_concurrent_writers_leave_whole_files_and_no_temporaries(tmp_path: Path) -> None:
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def write() -> None:
        barrier.wait()
        try:
            ensure_models(tmp_path, 3)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{t}.json" for t in tenant_ids(3)]
    for tenant_id in tenant_ids(3):
        assert read_model(tmp_path / f"{tenant_id}.json", tenant_id).model_id == tenant_id


def test_a_relative_model_dir_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    deployment = TenantModels(model_dir="models", num_tenants=1)
    assert deployment.model_dir == tmp_path / "models"
    assert (tmp_path / "models" / "tenant-01.json").is_file()


def test_weights_are_deterministic_per_tenant(model_dir: Path) -> None:
    assert generate_model("tenant-07") == generate_model("tenant-07")
    assert generate_model("tenant-07")["weights"] != generate_model("tenant-08")["weights"]
    # Pinned: every machine and every release must generate the same tenant-07.
    assert generate_model("tenant-07")["weights"] == {
        "temperature": 0.5933,
        "hour": -0.462,
        "day_of_week": -4.6665,
        "promo": 13.7276,
    }
    assert generate_model("tenant-07")["bias"] == 100.8107
    on_disk = json.loads((model_dir / "tenant-02.json").read_bytes())
    assert on_disk == generate_model("tenant-02")


def test_a_model_file_holds_the_features_and_the_embedding(model_dir: Path) -> None:
    model = read_model(model_dir / "tenant-01.json", "tenant-01")
    rows, dims = EMBEDDING_SHAPE
    assert model.features == FEATURES
    assert model.embedding_shape == (rows, dims)
    assert len(model.embedding) == rows * dims
    assert model.file_bytes == (model_dir / "tenant-01.json").stat().st_size


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", json.dumps({**generate_model("tenant-02"), "format": "v0"}).encode()],
    ids=["not-json", "not-an-object", "wrong-format"],
)
def test_a_broken_model_file_is_a_model_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tenant-02.json"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"tenant-02\.json"):
        read_model(path, "tenant-02")


def test_a_file_holding_another_tenant_is_a_model_file_error(tmp_path: Path) -> None:
    path = tmp_path / "tenant-02.json"
    path.write_text(json.dumps(generate_model("tenant-01")))
    with pytest.raises(ModelFileError, match="tenant-01"):
        read_model(path, "tenant-02")


# -- the loader and its cache ---------------------------------------------------------------


async def test_the_cache_keeps_the_three_most_recently_used_tenants(
    deployment: TenantModels, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="examples.tenants")
    for tenant_id in tenant_ids(3):
        with request_context(tenant_id):
            await deployment.load_model(tenant_id)
    assert resident(deployment) == ["tenant-01", "tenant-02", "tenant-03"]
    assert "unloading" not in caplog.text

    with request_context("tenant-01"):
        await deployment.load_model("tenant-01")
    with request_context("tenant-04"):
        await deployment.load_model("tenant-04")

    assert resident(deployment) == ["tenant-03", "tenant-01", "tenant-04"]
    state = TenantModels.load_model.cache_for(deployment).state()
    assert state.capacity == 3
    assert state.loading == ()
    assert "unloading tenant-02" in caplog.text
    assert TenantModels.load_model.cache_for(deployment).metrics.loads == 4


async def test_loading_an_unknown_tenant_raises_tenant_not_found(deployment: TenantModels) -> None:
    with pytest.raises(TenantNotFound, match="tenant-99"):
        await deployment.load_model("tenant-99")


async def test_the_loader_refuses_ids_that_are_paths(deployment: TenantModels) -> None:
    with pytest.raises(InvalidTenantId):
        await deployment.load_model("../etc/passwd")


async def test_load_delay_is_added_to_each_load(model_dir: Path) -> None:
    deployment = TenantModels(model_dir=str(model_dir), num_tenants=1, load_delay_s=0.01)
    model = await deployment.load_model("tenant-01")
    assert model.model_id == "tenant-01"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_tenants": -1}, ValueError),
        ({"num_tenants": "20"}, ValueError),
        ({"load_delay_s": -1.0}, ValueError),
        ({"load_delay_s": "1"}, TypeError),
    ],
)
def test_bad_init_kwargs_are_refused(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        TenantModels(model_dir=str(tmp_path), **kwargs)


# -- HTTP -----------------------------------------------------------------------------------


async def test_get_describes_the_model(serve: Serve, deployment: TenantModels) -> None:
    client = await serve(deployment)
    response = await client.get("/anything", headers=headers("tenant-03"))
    assert response.status == 200
    info = await response.json()
    expected = generate_model("tenant-03")
    assert info["model"] == "tenant-03"
    assert info["features"] == list(FEATURES)
    assert info["weights"] == expected["weights"]
    assert info["bias"] == expected["bias"]
    assert info["embedding_shape"] == list(EMBEDDING_SHAPE)
    assert info["file_bytes"] > 150_000


async def test_a_prediction_equals_the_hand_computation(
    serve: Serve, deployment: TenantModels
) -> None:
    client = await serve(deployment)
    features = {"temperature": 21.5, "hour": 14, "day_of_week": 2, "promo": 1}
    response = await client.post("/", json={"features": features}, headers=headers("tenant-02"))
    assert response.status == 200
    answer = await response.json()
    assert answer == {
        "model": "tenant-02",
        "prediction": pytest.approx(by_hand("tenant-02", features)),
    }


async def test_missing_features_count_as_zero(serve: Serve, deployment: TenantModels) -> None:
    client = await serve(deployment)
    response = await client.post("/", json={"features": {"hour": 9}}, headers=headers("tenant-01"))
    answer = await response.json()
    assert answer["prediction"] == pytest.approx(by_hand("tenant-01", {"hour": 9}))
    response = await client.post("/", json={"features": {}}, headers=headers("tenant-01"))
    assert (await response.json())["prediction"] == pytest.approx(
        generate_model("tenant-01")["bias"]
    )


async def test_a_batch_gets_one_prediction_per_instance(
    serve: Serve, deployment: TenantModels
) -> None:
    client = await serve(deployment)
    instances: list[dict[str, float]] = [{"hour": 9}, {"hour": 18, "promo": 1}, {}]
    response = await client.post(
        "/predict", json={"instances": instances}, headers=headers("tenant-04")
    )
    assert response.status == 200
    answer = await response.json()
    assert answer["model"] == "tenant-04"
    assert answer["predictions"] == [pytest.approx(by_hand("tenant-04", row)) for row in instances]


async def test_an_unknown_tenant_is_404_and_takes_no_cache_slot(
    serve: Serve, deployment: TenantModels
) -> None:
    client = await serve(deployment)
    await client.get("/", headers=headers("tenant-01"))
    response = await client.post("/", json={"features": {}}, headers=headers("tenant-99"))
    assert response.status == 404
    error = (await response.json())["error"]
    assert error["code"] == "model_not_found"
    assert "tenant-99" in error["message"]
    assert resident(deployment) == ["tenant-01"]


async def test_a_tenant_file_added_by_hand_is_served(serve: Serve, tmp_path: Path) -> None:
    deployment = TenantModels(model_dir=str(tmp_path), num_tenants=0)
    (tmp_path / "acme.json").write_text(json.dumps(generate_model("acme")))
    client = await serve(deployment)
    response = await client.post("/", json={"features": {"promo": 1}}, headers=headers("acme"))
    assert (await response.json())["prediction"] == pytest.approx(by_hand("acme", {"promo": 1}))


@pytest.mark.parametrize(
    "model_id",
    ["../etc/passwd", "/etc/passwd", "tenant-01/../tenant-02", "..", ".hidden", "a\\b", "a..b"],
)
async def test_a_model_id_that_is_a_path_is_400(
    serve: Serve, deployment: TenantModels, model_id: str
) -> None:
    client = await serve(deployment)
    response = await client.get("/", headers=headers(model_id))
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_model_id"
    assert resident(deployment) == []


async def test_no_model_id_is_400_naming_the_header(serve: Serve, deployment: TenantModels) -> None:
    client = await serve(deployment)
    response = await client.post("/", json={"features": {}})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "missing_model_id"
    assert "serve_multiplexed_model_id" in error["message"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b'{"features": {"hour": NaN}}', "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (b'{"features": [1, 2]}', "invalid_request"),
        (b'{"instances": {"hour": 1}}', "invalid_request"),
        (b'{"instances": [{"hour": 1}, 3]}', "invalid_request"),
        (b'{"features": {}, "instances": []}', "invalid_request"),
        (b'{"features": {"humidity": 0.4}}', "unknown_feature"),
        (b'{"instances": [{"hour": 1}, {"wind": 3}]}', "unknown_feature"),
        (b'{"features": {"hour": "14"}}', "invalid_feature_value"),
        (b'{"features": {"promo": true}}', "invalid_feature_value"),
        (b'{"features": {"hour": null}}', "invalid_feature_value"),
        (b'{"features": {"hour": 1e400}}', "invalid_feature_value"),
    ],
)
async def test_a_bad_body_is_400_with_a_code(
    serve: Serve, deployment: TenantModels, body: bytes, code: str
) -> None:
    client = await serve(deployment)
    response = await client.post("/", data=body, headers=headers("tenant-01"))
    assert response.status == 400
    assert response.content_type == "application/json"
    assert (await response.json())["error"]["code"] == code


async def test_other_methods_are_405(serve: Serve, deployment: TenantModels) -> None:
    client = await serve(deployment)
    response = await client.delete("/", headers=headers("tenant-01"))
    assert response.status == 405
    assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
    assert (await response.json())["error"]["code"] == "method_not_allowed"
