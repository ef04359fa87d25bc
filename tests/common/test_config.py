import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import (
    _DEPLOYMENT_RULES,
    _ROUTER_RULES,
    ClusterConfig,
    ConfigError,
    DeploymentConfig,
    RouterConfig,
    dump_config,
    load_config,
    parse_config,
)

FULL_YAML = """\
router:
  host: 0.0.0.0
  port: 9000
  count: 3
  max_queued_requests: 50
  queue_timeout_s: 2.5
  request_timeout_s: 60
  retry_on_replica_failure: false
  max_replay_body_bytes: 0
  max_request_body_bytes: 1000
  header_timeout_s: 3
  keepalive_timeout_s: 20
  retry_budget_ratio: 0.5
  retry_budget_min_per_s: 0
  breaker_failures: 2
  breaker_cooldown_s: 0.5
  load_failure_cooldown_s: 60
  max_load_failures: 2
  access_log: json
  model_id_from: both
  popular_model_patience: 10
  placement_lease_url: redis://redis:6379/0
  placement_lease_ttl_s: 1.5
  placement_lease_timeout_s: 0.2
deployment:
  import_path: examples.tenants:TenantModels
  init_kwargs: {model_dir: ./models, warm: [a, b]}
  num_replicas: 4
  max_num_models_per_replica: 3
  max_ongoing_requests: 16
  host: 127.0.0.2
  heartbeat_interval_s: 0.5
  heartbeat_timeout_s: 2
  graceful_shutdown_timeout_s: 10
  model_load_timeout_s: 120.0
  max_concurrent_loads: 1
"""


def deployment(**overrides: object) -> dict[str, Any]:
    """Minimal valid config data with `overrides` in the deployment section."""
    return {"deployment": {"import_path": "pkg.mod:Cls", **overrides}}


def config_error(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    config = parse_config(deployment())
    assert config.router == RouterConfig()
    assert config.router.port == 8000
    assert config.router.retry_on_replica_failure is True
    assert config.deployment == DeploymentConfig(import_path="pkg.mod:Cls")
    assert config.deployment.init_kwargs == {}
    assert config.deployment.num_replicas == 1
    assert config.deployment.max_num_models_per_replica is None
    assert config.deployment.max_concurrent_loads is None
    assert config.source == "<config>"


def test_full_file_loads_and_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_YAML)
    config = load_config(path)
    assert config.source == str(path)
    assert config.router == RouterConfig(
        host="0.0.0.0",
        port=9000,
        count=3,
        max_queued_requests=50,
        queue_timeout_s=2.5,
        request_timeout_s=60.0,
        retry_on_replica_failure=False,
        max_replay_body_bytes=0,
        max_request_body_bytes=1000,
        header_timeout_s=3.0,
        keepalive_timeout_s=20.0,
        retry_budget_ratio=0.5,
        retry_budget_min_per_s=0.0,
        breaker_failures=2,
        breaker_cooldown_s=0.5,
        load_failure_cooldown_s=60.0,
        max_load_failures=2,
        access_log="json",
        model_id_from="both",
        popular_model_patience=10.0,
        placement_lease_url="redis://redis:6379/0",
        placement_lease_ttl_s=1.5,
        placement_lease_timeout_s=0.2,
    )
    assert config.deployment.init_kwargs == {"model_dir": "./models", "warm": ["a", "b"]}
    assert config.deployment.num_replicas == 4
    assert config.deployment.max_num_models_per_replica == 3
    assert config.deployment.heartbeat_timeout_s == 2.0
    assert config.deployment.max_concurrent_loads == 1
    assert isinstance(config.deployment.heartbeat_timeout_s, float)

    assert dump_config(config) == yaml.safe_load(FULL_YAML)
    rewritten = write(tmp_path, yaml.safe_dump(dump_config(config)))
    assert load_config(rewritten) == config


def test_dump_is_a_copy_that_parses_back() -> None:
    config = parse_config(deployment(init_kwargs={"nested": {"k": [1]}}), source="x.yaml")
    dumped = dump_config(config)
    assert set(dumped) == {"router", "deployment"}
    dumped["deployment"]["init_kwargs"]["nested"]["k"].append(2)
    assert config.deployment.init_kwargs == {"nested": {"k": [1]}}
    assert parse_config(dump_config(config), source="x.yaml") == config


def test_every_field_has_exactly_one_rule() -> None:
    assert list(_ROUTER_RULES) == [f.name for f in dataclasses.fields(RouterConfig)]
    assert list(_DEPLOYMENT_RULES) == [f.name for f in dataclasses.fields(DeploymentConfig)]


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        (deployment(num_replica=3), "deployment.num_replica", "did you mean 'num_replicas'?"),
        ({**deployment(), "routr": {}}, "routr", "did you mean 'router'?"),
        (
            {**deployment(), "router": {"prot": 1}},
            "router.prot",
            "did you mean 'port'?",
        ),
        (deployment(zzz=1), "deployment.zzz", "known keys: import_path, init_kwargs"),
        (deployment(queue_timeout_s=1), "deployment.queue_timeout_s", "belongs in the 'router'"),
        ({**deployment(), "num_replicas": 2}, "num_replicas", "belongs in the 'deployment'"),
    ],
)
def test_unknown_keys_are_named_with_a_hint(data: object, key: str, message: str) -> None:
    err = config_error(data)
    assert err.key == key
    assert str(err).startswith(f"{key}: unknown key; ")
    assert message in str(err)


def test_wrong_type_names_key_expected_type_and_value() -> None:
    err = config_error(deployment(num_replicas="four"))
    assert err.key == "deployment.num_replicas"
    assert str(err) == "deployment.num_replicas: must be an integer >= 0, got 'four'"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("router", "port", "8000"),
        ("router", "port", 8000.0),
        ("router", "host", 127),
        ("router", "retry_on_replica_failure", "yes"),
        ("router", "retry_on_replica_failure", 1),
        ("router", "queue_timeout_s", "30"),
        ("router", "count", "2"),
        ("router", "count", 2.0),
        ("router", "count", None),
        ("deployment", "import_path", None),
        ("deployment", "init_kwargs", ["a"]),
        ("deployment", "init_kwargs", {1: "a"}),
        ("deployment", "max_num_models_per_replica", "3"),
        ("deployment", "max_concurrent_loads", "1"),
        ("deployment", "max_concurrent_loads", 1.0),
        ("deployment", "heartbeat_interval_s", None),
    ],
)
def test_wrong_types_are_rejected(section: str, key: str, value: object) -> None:
    data = deployment()
    data.setdefault(section, {})[key] = value
    err = config_error(data)
    assert err.key == f"{section}.{key}"
    assert str(err).endswith(f"got {value!r}")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("router", "port"),
        ("router", "max_queued_requests"),
        ("router", "count"),
        ("deployment", "num_replicas"),
        ("deployment", "max_ongoing_requests"),
        ("deployment", "max_num_models_per_replica"),
        ("deployment", "max_concurrent_loads"),
        ("router", "queue_timeout_s"),
    ],
)
def test_bool_is_not_an_int(section: str, key: str) -> None:
    data = deployment()
    data.setdefault(section, {})[key] = True
    err = config_error(data)
    assert err.key == f"{section}.{key}"
    assert str(err).endswith("got True")


def test_int_is_accepted_as_seconds_and_stored_as_float() -> None:
    config = parse_config({**deployment(model_load_timeout_s=7), "router": {"queue_timeout_s": 3}})
    assert config.deployment.model_load_timeout_s == 7.0
    assert isinstance(config.deployment.model_load_timeout_s, float)
    assert isinstance(config.router.queue_timeout_s, float)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("router", "port", 70000),
        ("router", "port", -1),
        ("router", "count", 0),
        ("router", "count", -2),
        ("router", "count", 65),
        ("router", "max_queued_requests", -1),
        ("router", "max_replay_body_bytes", -1),
        ("router", "popular_model_patience", -1),
        ("router", "retry_budget_ratio", 1.5),
        ("router", "max_request_body_bytes", -1),
        ("router", "header_timeout_s", 0),
        ("router", "keepalive_timeout_s", math.inf),
        ("router", "retry_budget_min_per_s", -1),
        ("router", "breaker_failures", 0),
        ("router", "max_load_failures", 0),
        ("router", "access_log", "verbose"),
        ("router", "model_id_from", "query"),
        ("router", "load_failure_cooldown_s", -1),
        ("router", "breaker_cooldown_s", 0),
        ("router", "popular_model_patience", math.inf),
        ("router", "queue_timeout_s", 0),
        ("router", "request_timeout_s", -5.0),
        ("router", "request_timeout_s", math.inf),
        ("router", "request_timeout_s", math.nan),
        ("router", "host", ""),
        ("router", "placement_lease_url", "http://redis:6379"),
        ("router", "placement_lease_url", "redis://:6379"),
        ("router", "placement_lease_url", "redis://redis:99999"),
        ("router", "placement_lease_url", "redis://redis/zero"),
        ("router", "placement_lease_url", "unix://"),
        ("router", "placement_lease_url", ""),
        ("router", "placement_lease_ttl_s", 0.0),
        ("router", "placement_lease_ttl_s", 61),
        ("deployment", "num_replicas", -1),
        ("deployment", "max_ongoing_requests", 0),
        ("deployment", "heartbeat_interval_s", 0.0),
        ("deployment", "graceful_shutdown_timeout_s", 0),
        ("deployment", "model_load_timeout_s", -0.1),
    ],
)
def test_impossible_values_are_rejected(section: str, key: str, value: object) -> None:
    data = deployment()
    data.setdefault(section, {})[key] = value
    assert config_error(data).key == f"{section}.{key}"


def test_router_count_defaults_to_one_and_says_what_it_takes() -> None:
    assert parse_config(deployment()).router.count == 1
    assert parse_config({**deployment(), "router": {"count": 4}}).router.count == 4
    err = config_error({**deployment(), "router": {"count": 0}})
    assert str(err) == "router.count: must be an integer from 1 to 64, got 0"


@pytest.mark.parametrize(
    "url",
    ["redis://10.0.0.7:6379/0", "redis://redis", "rediss://u:pw@redis:6380/2", "unix:///r.sock"],
)
def test_a_placement_lease_takes_a_redis_url_and_is_off_by_default(url: str) -> None:
    assert parse_config(deployment()).router.placement_lease_url is None
    router = parse_config({**deployment(), "router": {"placement_lease_url": url}}).router
    assert router.placement_lease_url == url
    assert router.placement_lease_ttl_s == 0.5
    err = config_error({**deployment(), "router": {"placement_lease_url": "redis:/x"}})
    assert "router.placement_lease_url: must be null (no lease) or a Redis URL" in str(err)


def test_port_range_edges_are_accepted() -> None:
    assert parse_config({**deployment(), "router": {"port": 0}}).router.port == 0
    assert parse_config({**deployment(), "router": {"port": 65535}}).router.port == 65535
    assert "from 0 to 65535, got 70000" in str(
        config_error({**deployment(), "router": {"port": 70000}})
    )


@pytest.mark.parametrize(("interval", "timeout"), [(1.0, 1.0), (2, 1.5), (5.0, 4)])
def test_heartbeat_timeout_must_exceed_interval(interval: float, timeout: float) -> None:
    err = config_error(deployment(heartbeat_interval_s=interval, heartbeat_timeout_s=timeout))
    assert err.key == "deployment.heartbeat_timeout_s"
    assert "greater than heartbeat_interval_s" in str(err)


def test_heartbeat_timeout_just_above_interval_is_accepted() -> None:
    config = parse_config(deployment(heartbeat_interval_s=1, heartbeat_timeout_s=1.001))
    assert config.deployment.heartbeat_timeout_s == 1.001


@pytest.mark.parametrize("capacity", [0, -2, -100])
def test_capacity_zero_or_below_minus_one_is_rejected(capacity: int) -> None:
    err = config_error(deployment(max_num_models_per_replica=capacity))
    assert err.key == "deployment.max_num_models_per_replica"
    assert "-1 (no limit)" in str(err)


@pytest.mark.parametrize("capacity", [-1, 1, 1000, None])
def test_capacity_minus_one_positive_or_null_is_accepted(capacity: int | None) -> None:
    config = parse_config(deployment(max_num_models_per_replica=capacity))
    assert config.deployment.max_num_models_per_replica == capacity


@pytest.mark.parametrize("loads", [0, -1])
def test_max_concurrent_loads_below_one_is_rejected(loads: int) -> None:
    err = config_error(deployment(max_concurrent_loads=loads))
    assert err.key == "deployment.max_concurrent_loads"
    assert str(err) == (
        "deployment.max_concurrent_loads: must be null (as many as there are model slots) "
        f"or an integer >= 1, got {loads}"
    )


@pytest.mark.parametrize("loads", [1, 2, 1000, None])
def test_max_concurrent_loads_positive_or_null_is_accepted(loads: int | None) -> None:
    config = parse_config(deployment(max_concurrent_loads=loads))
    assert config.deployment.max_concurrent_loads == loads


def test_missing_deployment_or_import_path() -> None:
    err = config_error({"router": {}})
    assert (err.key, str(err)) == ("deployment", "deployment: required section is missing")
    err = config_error({"deployment": {"num_replicas": 2}})
    assert err.key == "deployment.import_path"
    assert "required" in str(err)


@pytest.mark.parametrize(
    "import_path",
    [
        "pkg.mod",
        "pkg.mod:",
        ":Cls",
        "pkg..mod:Cls",
        "pkg.mod:Cls:x",
        "pkg-x:Cls",
        "pkg.mod:1Cls",
        "",
    ],
)
def test_malformed_import_path_is_rejected(import_path: str) -> None:
    err = config_error({"deployment": {"import_path": import_path}})
    assert err.key == "deployment.import_path"
    assert "package.module:Class" in str(err)


@pytest.mark.parametrize("import_path", ["mod:Cls", "a.b.c:Outer.Inner", "_p.m2:make_model"])
def test_well_formed_import_paths_are_accepted(import_path: str) -> None:
    assert parse_config({"deployment": {"import_path": import_path}}).deployment.import_path == (
        import_path
    )


@pytest.mark.parametrize("section", ["router", "deployment"])
@pytest.mark.parametrize("value", [None, [], "x"])
def test_a_section_must_be_a_mapping(section: str, value: object) -> None:
    data: dict[str, object] = deployment()
    data[section] = value
    err = config_error(data)
    assert err.key == section
    assert "must be a mapping" in str(err)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == ""
    assert str(caught.value) == f"{path}: the top level must be a mapping of sections, got {kind}"


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"])
def test_empty_file_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="the config is empty") as caught:
        load_config(path)
    assert caught.value.key == ""
    assert str(caught.value).startswith(f"{path}: ")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "deployment:\n  import_path: a:B\n   num_replicas: 2\nrouter: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == ""
    assert str(caught.value) == (
        f"{path}: invalid YAML at line 3, column 16: mapping values are not allowed here"
    )


def test_duplicate_yaml_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "deployment:\n  import_path: a:B\n  num_replicas: 2\n  num_replicas: 3\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == ""
    assert str(caught.value) == (
        f"{path}: invalid YAML at line 4, column 3: found duplicate key 'num_replicas'"
    )


def test_missing_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.key, str(caught.value)) == ("", f"{path}: no such config file")


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as caught:
        load_config(tmp_path)
    assert caught.value.key == ""


def test_config_error_is_a_value_error() -> None:
    assert isinstance(config_error(deployment(num_replicas=-1)), ValueError)


def test_cluster_config_can_be_built_directly() -> None:
    config = ClusterConfig(deployment=DeploymentConfig(import_path="m:C"))
    assert config.router == RouterConfig()
    assert config.source == "<default>"


# Random valid values for every key; omitted keys take their defaults.
SECONDS = st.one_of(
    st.integers(min_value=1, max_value=10**6),
    st.floats(min_value=0, max_value=1e9, exclude_min=True),
)
IDENTIFIER = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
IMPORT_PATH = st.builds(
    lambda module, attribute: f"{'.'.join(module)}:{'.'.join(attribute)}",
    st.lists(IDENTIFIER, min_size=1, max_size=3),
    st.lists(IDENTIFIER, min_size=1, max_size=2),
)
JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
ROUTER = st.fixed_dictionaries(
    {},
    optional={
        "host": st.text(min_size=1),
        "port": st.integers(0, 65535),
        "max_queued_requests": st.integers(min_value=0),
        "queue_timeout_s": SECONDS,
        "request_timeout_s": SECONDS,
        "retry_on_replica_failure": st.booleans(),
        "max_replay_body_bytes": st.integers(min_value=0),
        "popular_model_patience": st.none() | st.floats(0, 1e6),
        "retry_budget_ratio": st.floats(0, 1),
        "max_request_body_bytes": st.integers(min_value=0),
        "header_timeout_s": SECONDS,
        "keepalive_timeout_s": SECONDS,
        "retry_budget_min_per_s": st.floats(0, 1e6),
        "breaker_failures": st.integers(min_value=1),
        "breaker_cooldown_s": SECONDS,
        "load_failure_cooldown_s": SECONDS,
        "max_load_failures": st.integers(min_value=1),
        "access_log": st.sampled_from(["text", "json", "off"]),
        "model_id_from": st.sampled_from(["header", "json_body", "both"]),
    },
)


@st.composite
def deployments(draw: st.DrawFn) -> dict[str, object]:
    data = draw(
        st.fixed_dictionaries(
            {"import_path": IMPORT_PATH},
            optional={
                "init_kwargs": st.dictionaries(st.text(max_size=8), JSON_LIKE, max_size=4),
                "num_replicas": st.integers(min_value=0),
                "max_num_models_per_replica": st.none() | st.just(-1) | st.integers(min_value=1),
                "max_ongoing_requests": st.integers(min_value=1),
                "host": st.text(min_size=1),
                "graceful_shutdown_timeout_s": SECONDS,
                "model_load_timeout_s": SECONDS,
                "max_concurrent_loads": st.none() | st.integers(min_value=1),
            },
        )
    )
    if draw(st.booleans()):
        interval = draw(SECONDS)
        data["heartbeat_interval_s"] = interval
        data["heartbeat_timeout_s"] = draw(
            st.floats(min_value=interval, max_value=2e9, exclude_min=True)
        )
    return data


@given(router=st.none() | ROUTER, deployment_section=deployments())
def test_dump_round_trips_any_valid_config(
    router: dict[str, object] | None, deployment_section: dict[str, object]
) -> None:
    data: dict[str, object] = {"deployment": deployment_section}
    if router is not None:
        data["router"] = router
    config = parse_config(data)
    dumped = dump_config(config)
    for section, given_values in data.items():
        assert isinstance(given_values, dict)
        for key, value in given_values.items():
            assert dumped[section][key] == value
    assert parse_config(dumped) == config
    assert dump_config(parse_config(dumped)) == dumped


# --- fuzzing: thousands of cases -------------------------------------------------------------

FUZZ = settings(max_examples=2000, deadline=None)
DROP = object()
KNOWN_KEYS = sorted({*_ROUTER_RULES, *_DEPLOYMENT_RULES, "router", "deployment"})
YAML_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["pkg.mod:Cls", "0.0.0.0", "", "-1", "1e3"])
)
YAML_DATA = st.recursive(
    YAML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | YAML_SCALARS, inner, max_size=4)
    ),
    max_leaves=6,
)
"""What YAML loads to: scalars, lists and mappings, keyed mostly by the config's own keys."""


def parsed_or_error(parse: Callable[[], ClusterConfig]) -> ClusterConfig | ConfigError:
    try:
        return parse()
    except ConfigError as error:
        return error


def is_valid_or_explained(result: ClusterConfig | ConfigError) -> bool:
    """A config that dumps and parses back to itself, or a ConfigError naming its key."""
    if isinstance(result, ConfigError):
        return bool(str(result)) and str(result).startswith(result.key)
    return parse_config(dump_config(result), source=result.source) == result


@FUZZ
@given(YAML_DATA)
def test_any_data_parses_or_raises_config_error(data: object) -> None:
    assert is_valid_or_explained(parsed_or_error(lambda: parse_config(data)))


@FUZZ
@given(
    st.sampled_from([yaml.safe_load(FULL_YAML), deployment()]),
    st.lists(
        st.tuples(
            st.sampled_from([None, "router", "deployment"]),
            st.sampled_from(KNOWN_KEYS) | st.text(max_size=8),
            YAML_DATA | st.just(DROP),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_a_valid_config_with_keys_changed_parses_or_raises_config_error(
    valid: dict[str, Any], changes: list[tuple[str | None, str, object]]
) -> None:
    data: dict[Any, Any] = {name: dict(section) for name, section in valid.items()}
    for section, key, value in changes:
        target = data if section is None else data.get(section)
        if not isinstance(target, dict):
            continue
        if value is DROP:
            target.pop(key, None)
        else:
            target[key] = value
    assert is_valid_or_explained(parsed_or_error(lambda: parse_config(data)))


SHORT_YAML = "router: {port: 0}\ndeployment:\n  import_path: pkg.mod:Cls\n  num_replicas: 2\n"
"""A valid config that PyYAML (pure Python here) reads faster than FULL_YAML."""


def edited_text(text: str, data: st.DataObject) -> str:
    """`text` after a few random character edits."""
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(text)))
        inserted = data.draw(st.text(max_size=4) | st.sampled_from([":", " ", "\n", "- ", "{"]))
        text = text[:position] + inserted + text[position + data.draw(st.integers(0, 4)) :]
    return text


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "cluster.yaml"


@FUZZ
@given(st.data())
def test_any_file_loads_or_raises_config_error(config_file: Path, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["bytes", "text", "edited"]))
    if kind == "bytes":
        config_file.write_bytes(data.draw(st.binary(max_size=200)))
    elif kind == "text":
        config_file.write_text(data.draw(st.text(max_size=200)), encoding="utf-8", errors="replace")
    else:
        valid = data.draw(st.sampled_from([FULL_YAML, SHORT_YAML]))
        config_file.write_text(edited_text(valid, data), encoding="utf-8", errors="replace")
    assert is_valid_or_explained(parsed_or_error(lambda: load_config(config_file)))


TOO_MANY_DIGITS = 5000
"""More than sys.get_int_max_str_digits() (4300): such an int cannot be converted to or from
a string."""


def test_an_integer_too_long_to_read_is_a_config_error(config_file: Path) -> None:
    digits = "9" * TOO_MANY_DIGITS
    config_file.write_text(f"deployment: {{import_path: 'a:B'}}\nrouter: {{port: {digits}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config_file)
    assert caught.value.key == ""


def test_an_integer_too_long_to_print_is_a_config_error() -> None:
    port = 10**TOO_MANY_DIGITS  # out of range; built without a str conversion
    with pytest.raises(ConfigError) as caught:
        parse_config({**deployment(), "router": {"port": port}})
    assert caught.value.key == "router.port"


def test_deeply_nested_yaml_is_a_config_error(config_file: Path) -> None:
    config_file.write_text("[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(ConfigError, match=r"nested too deeply|top level must be a mapping"):
        load_config(config_file)
