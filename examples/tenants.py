"""Per-tenant demand models, one JSON file each: the deployment `scripts/up` serves by default.

Each tenant (`tenant-01` ... `tenant-20`) owns a linear model over four named features plus a
bias, stored with a 200 KB embedding matrix that stands in for the bulk of a real model's
weights, so a load is real file I/O and parsing. The files are generated from the tenant name
(deterministically) the first time a replica starts; each appears whole through `os.replace`,
so replicas that start together never read a torn file. A file dropped into the model
directory by hand is servable at once.

HTTP, with the tenant named in the `serve_multiplexed_model_id` header, on any path:

    GET   -> {"model", "features", "weights", "bias", "file_bytes", "embedding_shape"}
    POST  {"features": {"temperature": 21.5, "hour": 14}}        -> {"model", "prediction"}
    POST  {"instances": [{"hour": 9}, {"hour": 18, "promo": 1}]} -> {"model", "predictions"}

A missing feature counts as 0. Errors are JSON `{"error": {"code", "message"}}`: 400 for a
missing or unsafe model id (ids are file names: never a path) and for a malformed body, 404 for
an unknown tenant, 405 for a method other than GET, HEAD and POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import tempfile
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

from replica import get_multiplexed_model_id, multiplexed

__all__ = [
    "EMBEDDING_SHAPE",
    "FEATURES",
    "BadPredictionRequest",
    "InvalidTenantId",
    "ModelFileError",
    "TenantModel",
    "TenantModels",
    "TenantNotFound",
    "ensure_models",
    "generate_model",
    "model_path",
    "parse_prediction_request",
    "read_model",
    "tenant_ids",
]

logger = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = ("temperature", "hour", "day_of_week", "promo")
EMBEDDING_SHAPE: tuple[int, int] = (192, 128)  # rows, dims: about 200 KB of JSON
FILE_FORMAT = "modelplex.tenant-model/1"

# A model id is a file name inside the model directory: no separators, no "..", no leading dot.
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_ALLOWED_METHODS = ("GET", "HEAD", "POST")


class TenantNotFound(LookupError):
    """No model file exists for the tenant."""


class InvalidTenantId(ValueError):
    """The model id cannot name a model file (it holds a separator, '..', or odd characters)."""


class ModelFileError(ValueError):
    """A model file exists but does not hold a valid model."""


class BadPredictionRequest(ValueError):
    """A POST body the model cannot answer; `code` is the stable error code for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- the model ------------------------------------------------------------------------------


class TenantModel:
    """One tenant's linear model: `prediction = bias + sum(weight[f] * features[f])`."""

    __slots__ = ("bias", "embedding", "embedding_shape", "file_bytes", "model_id", "weights")

    def __init__(
        self,
        model_id: str,
        *,
        weights: Mapping[str, float],
        bias: float,
        embedding: array[float],
        embedding_shape: tuple[int, int],
        file_bytes: int,
    ) -> None:
        self.model_id = model_id
        self.weights = dict(weights)
        self.bias = bias
        self.embedding = embedding
        self.embedding_shape = embedding_shape
        self.file_bytes = file_bytes

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def predict(self, features: Mapping[str, float]) -> float:
        """The prediction for one row; absent features count as 0, unknown ones are an error."""
        unknown = sorted(set(features) - self.weights.keys())
        if unknown:
            raise ValueError(f"unknown features {unknown}; the model's are {list(self.weights)}")
        return self.bias + sum(
            weight * float(features.get(name, 0.0)) for name, weight in self.weights.items()
        )

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "features": list(self.weights),
            "weights": dict(self.weights),
            "bias": self.bias,
            "file_bytes": self.file_bytes,
            "embedding_shape": list(self.embedding_shape),
        }

    def __del__(self) -> None:
        logger.debug("unloading %s", self.model_id)


# -- model files ----------------------------------------------------------------------------


def tenant_ids(num_tenants: int) -> list[str]:
    """The tenants a fresh model directory holds: tenant-01 ... tenant-NN."""
    return [f"tenant-{i:02d}" for i in range(1, num_tenants + 1)]


def model_path(model_dir: Path, model_id: str) -> Path:
    """The file holding `model_id`'s model; never a path outside `model_dir`."""
    if not _MODEL_ID.fullmatch(model_id) or ".." in model_id:
        raise InvalidTenantId(
            f"model id {model_id!r} cannot name a model file: use letters, digits, '.', '_' "
            "and '-' (at most 200, starting with a letter or digit, no '..')"
        )
    return model_dir / f"{model_id}.json"


def generate_model(tenant_id: str) -> dict[str, Any]:
    """The model file content for `tenant_id`: the same on every machine and every run."""
    rng = random.Random(f"modelplex-tenant:{tenant_id}")
    scales = {"temperature": 3.0, "hour": 2.0, "day_of_week": 5.0, "promo": 40.0}
    weights = {name: round(rng.uniform(-scales[name], scales[name]), 4) for name in FEATURES}
    weights["promo"] = abs(weights["promo"])  # a promotion never lowers demand
    rows, dims = EMBEDDING_SHAPE
    return {
        "format": FILE_FORMAT,
        "tenant": tenant_id,
        "weights": weights,
        "bias": round(rng.uniform(20.0, 120.0), 4),
        "embedding": {
            "rows": rows,
            "dims": dims,
            "values": [round(rng.gauss(0.0, 0.5), 5) for _ in range(rows * dims)],
        },
    }


def ensure_models(model_dir: str | os.PathLike[str], num_tenants: int) -> list[Path]:
    """Write the model file of every tenant that lacks one; return the files written.

    Safe when several processes run it at once: a file only ever appears whole (written to a
    temporary file, then renamed over), and two writers of one file write the same bytes.
    """
    directory = Path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for tenant_id in tenant_ids(num_tenants):
        path = directory / f"{tenant_id}.json"
        if path.exists():
            continue
        content = json.dumps(generate_model(tenant_id), separators=(",", ":"))
        _write_atomically(path, content.encode())
        written.append(path)
    return written


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def read_model(path: Path, model_id: str) -> TenantModel:
    """Read and check one model file (blocking: run it in a thread)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TenantNotFound(f"no model for tenant {model_id!r}") from None
    try:
        document = json.loads(data)
        return _parse_model(document, model_id, len(data))
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"{path} does not hold a valid model: {error}") from None


def _parse_model(document: Any, model_id: str, file_bytes: int) -> TenantModel:
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise ValueError(f"expected a JSON object with format {FILE_FORMAT!r}")
    if document["tenant"] != model_id:
        raise ValueError(f"it is the model of {document['tenant']!r}")
    weights = document["weights"]
    if not isinstance(weights, dict) or not weights:
        raise ValueError("'weights' must map feature names to numbers")
    embedding = document["embedding"]
    rows, dims = int(embedding["rows"]), int(embedding["dims"])
    values = array("d", embedding["values"])
    if len(values) != rows * dims:
        raise ValueError(f"the embedding holds {len(values)} values, not {rows} x {dims}")
    return TenantModel(
        model_id,
        weights={str(name): float(weight) for name, weight in weights.items()},
        bias=float(document["bias"]),
        embedding=values,
        embedding_shape=(rows, dims),
        file_bytes=file_bytes,
    )


# -- request bodies -------------------------------------------------------------------------


def parse_prediction_request(
    body: bytes, features: Sequence[str]
) -> tuple[list[dict[str, float]], bool]:
    """The feature rows a POST body asks about, and whether it asked for a batch."""
    if not body.strip():
        raise BadPredictionRequest(
            "invalid_json", 'the body is empty: send {"features": {...}} or {"instances": [...]}'
        )
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except ValueError as error:
        raise BadPredictionRequest("invalid_json", f"the body is not valid JSON: {error}") from None
    if isinstance(document, dict) and document.keys() == {"features"}:
        return [_feature_row(document["features"], features, "features")], False
    if isinstance(document, dict) and document.keys() == {"instances"}:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise BadPredictionRequest("invalid_request", "'instances' must be a list of objects")
        rows = [_feature_row(row, features, f"instances[{i}]") for i, row in enumerate(instances)]
        return rows, True
    raise BadPredictionRequest(
        "invalid_request",
        'the body must be a JSON object with one key: "features" (an object) or "instances" '
        "(a list of objects)",
    )


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _feature_row(raw: object, features: Sequence[str], where: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise BadPredictionRequest(
            "invalid_request", f"{where} must be an object mapping feature names to numbers"
        )
    row: dict[str, float] = {}
    for name, value in raw.items():
        if name not in features:
            raise BadPredictionRequest(
                "unknown_feature",
                f"{where}: unknown feature {name!r}; the model's features are "
                f"{', '.join(features)}",
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadPredictionRequest(
                "invalid_feature_value",
                f"{where}.{name} must be a number, got {json.dumps(value)[:60]}",
            )
        number = float(value) if abs(value) < 1e300 else math.inf
        if not math.isfinite(number):
            raise BadPredictionRequest(
                "invalid_feature_value", f"{where}.{name} must be a finite number below 1e300"
            )
        row[name] = number
    return row


# -- the deployment -------------------------------------------------------------------------


class TenantModels:
    """Serve each tenant's model from `model_dir`, at most 3 of them resident per replica.

    `model_dir` is resolved against the working directory at construction; the files of
    `num_tenants` tenants are created there if missing. `load_delay_s` is added to every load,
    to mimic a model that takes seconds to load.
    """

    def __init__(
        self,
        *,
        model_dir: str = "examples/models",
        num_tenants: int = 20,
        load_delay_s: float = 0.0,
    ) -> None:
        if isinstance(num_tenants, bool) or not isinstance(num_tenants, int) or num_tenants < 0:
            raise ValueError(f"num_tenants must be an integer >= 0, got {num_tenants!r}")
        if isinstance(load_delay_s, bool) or not isinstance(load_delay_s, int | float):
            raise TypeError(f"load_delay_s must be a number of seconds, got {load_delay_s!r}")
        if not 0 <= load_delay_s < math.inf:
            raise ValueError(f"load_delay_s must be finite and >= 0, got {load_delay_s!r}")
        self.model_dir = Path(model_dir).absolute()
        self.load_delay_s = float(load_delay_s)
        ensure_models(self.model_dir, num_tenants)

    @multiplexed(max_num_models_per_replica=3)
    async def load_model(self, model_id: str) -> TenantModel:
        """Read the tenant's model file in a thread; `TenantNotFound` when there is none."""
        path = model_path(self.model_dir, model_id)
        model = await asyncio.to_thread(read_model, path, model_id)
        if self.load_delay_s:
            await asyncio.sleep(self.load_delay_s)
        return model

    async def __call__(self, request: web.Request) -> dict[str, Any]:
        model_id = get_multiplexed_model_id()
        if not model_id:
            raise _json_error(
                web.HTTPBadRequest,
                "missing_model_id",
                "name a tenant in the 'serve_multiplexed_model_id' header, e.g. tenant-01",
            )
        if request.method not in _ALLOWED_METHODS:
            raise web.HTTPMethodNotAllowed(
                request.method,
                _ALLOWED_METHODS,
                text=_error_body("method_not_allowed", "use GET for model info, POST to predict"),
                content_type="application/json",
            )
        try:
            path = model_path(self.model_dir, model_id)
        except InvalidTenantId as error:
            raise _json_error(web.HTTPBadRequest, "invalid_model_id", str(error)) from None
        # Checked before the cache sees the id: a load for an unknown tenant takes a slot and
        # may evict a model in use by others, only to fail.
        if not path.is_file():
            raise _not_found(model_id)
        try:
            model: TenantModel = await self.load_model(model_id)
        except TenantNotFound:
            raise _not_found(model_id) from None

        if request.method != "POST":
            return model.describe()
        body = await request.read()
        try:
            rows, batch = parse_prediction_request(body, model.features)
        except BadPredictionRequest as error:
            raise _json_error(web.HTTPBadRequest, error.code, str(error)) from None
        predictions = [model.predict(row) for row in rows]
        if not all(math.isfinite(p) for p in predictions):
            raise _json_error(
                web.HTTPBadRequest,
                "invalid_feature_value",
                "the feature values are too large: the prediction overflows",
            )
        if batch:
            return {"model": model_id, "predictions": predictions}
        return {"model": model_id, "prediction": predictions[0]}


def _error_body(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


def _json_error(cls: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    return cls(text=_error_body(code, message), content_type="application/json")


def _not_found(model_id: str) -> web.HTTPException:
    return _json_error(
        web.HTTPNotFound, "model_not_found", f"no model file for tenant {model_id!r}"
    )
