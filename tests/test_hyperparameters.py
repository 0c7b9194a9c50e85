"""Tests of the hyperparameter table, its parser and the documents derived from it."""

import dataclasses
import json
import logging
import pickle
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcls.config.hyperparameters import (
    PARAMS,
    Hyperparameters,
    Kind,
    Param,
    RunContext,
    json_schema,
    markdown_table,
    parse_hyperparameters,
    valid_values,
    wire_form,
)
from imgcls.config.hyperparameters.values import _to_float
from imgcls.errors import ClientError, HyperparameterError

NAMES = [p.name for p in PARAMS]
REQUIRED = {"num_classes": "10", "num_training_samples": "1000"}

# The defaults of the spec (/work/shared/spec/hyperparameters.md), pinned here on purpose.
SPEC_DEFAULTS: dict[str, Any] = {
    "augmentation_type": None,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "checkpoint_frequency": None,
    "early_stopping": False,
    "early_stopping_min_epochs": 10,
    "early_stopping_patience": 5,
    "early_stopping_tolerance": 0.0,
    "epochs": 30,
    "eps": 1e-8,
    "gamma": 0.9,
    "image_shape": (3, 224, 224),
    "kv_store": None,
    "learning_rate": 0.1,
    "lr_scheduler_factor": 0.1,
    "lr_scheduler_step": (),
    "mini_batch_size": 32,
    "momentum": 0.9,
    "multi_label": False,
    "num_layers": 152,
    "optimizer": "sgd",
    "precision_dtype": "float32",
    "resize": None,
    "top_k": None,
    "use_pretrained_model": False,
    "use_weighted_loss": False,
    "weight_decay": 0.0001,
}

# Every parameter set, as SageMaker writes it, and the same values as native JSON.
STRINGS = {
    "num_classes": "10",
    "num_training_samples": "1000",
    "augmentation_type": "crop_color",
    "beta_1": "0.8",
    "beta_2": "0.99",
    "checkpoint_frequency": "3",
    "early_stopping": "True",
    "early_stopping_min_epochs": "4",
    "early_stopping_patience": "2",
    "early_stopping_tolerance": "0.01",
    "epochs": "12",
    "eps": "1e-7",
    "gamma": "0.95",
    "image_shape": "3,32,32",
    "kv_store": "dist_sync",
    "learning_rate": "0.05",
    "lr_scheduler_factor": "0.5",
    "lr_scheduler_step": "4,8",
    "mini_batch_size": "64",
    "momentum": "0.8",
    "multi_label": "1",
    "num_layers": "20",
    "optimizer": "adam",
    "precision_dtype": "float32",
    "resize": "40",
    "top_k": "5",
    "use_pretrained_model": "0",
    "use_weighted_loss": "1",
    "weight_decay": "0.0005",
    "inference_preprocessing": "crop",
    "label_smoothing": "0.1",
    "lr_scheduler": "step",
    "mixup_alpha": "0.2",
    "no_bias_decay": "1",
    "warmup_epochs": "2",
}
NATIVE = {
    **STRINGS,
    "num_classes": 10,
    "num_training_samples": 1000,
    "beta_1": 0.8,
    "beta_2": 0.99,
    "checkpoint_frequency": 3,
    "early_stopping": True,
    "early_stopping_min_epochs": 4,
    "early_stopping_patience": 2,
    "early_stopping_tolerance": 0.01,
    "epochs": 12,
    "eps": 1e-7,
    "gamma": 0.95,
    "learning_rate": 0.05,
    "lr_scheduler_factor": 0.5,
    "mini_batch_size": 64,
    "momentum": 0.8,
    "multi_label": 1,
    "num_layers": 20,
    "resize": 40,
    "top_k": 5,
    "use_pretrained_model": False,
    "use_weighted_loss": True,
    "weight_decay": 0.0005,
    "label_smoothing": 0.1,
    "mixup_alpha": 0.2,
    "no_bias_decay": 1,
    "warmup_epochs": 2,
}


def parse(context: RunContext | None = None, **values: Any) -> Any:
    """Parse the required parameters plus `values`."""
    return parse_hyperparameters({**REQUIRED, **values}, context)


def violations(context: RunContext | None = None, **values: Any) -> list[str]:
    """The violations of the required parameters plus `values`; fails if there are none."""
    with pytest.raises(HyperparameterError) as caught:
        parse(context, **values)
    return caught.value.violations


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture):
    """Returns the warnings logged on "imgcls" so far, even if that logger does not propagate."""
    logger = logging.getLogger("imgcls")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="imgcls")
    yield lambda: {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    logger.removeHandler(caplog.handler)


# --- the table itself ---------------------------------------------------------------------------


def test_table_has_the_parameters_of_the_spec():
    assert sorted(p.name for p in PARAMS if not p.extension) == sorted([*REQUIRED, *SPEC_DEFAULTS])
    assert len(set(NAMES)) == len(NAMES)
    assert [p.name for p in PARAMS if p.required] == list(REQUIRED)


def test_hyperparameters_fields_come_from_the_table():
    assert [f.name for f in dataclasses.fields(Hyperparameters)] == NAMES


@pytest.mark.parametrize("p", [p for p in PARAMS if p.default is not None], ids=lambda p: p.name)
def test_every_default_is_valid_for_its_own_parameter(p: Param):
    assert getattr(parse(**{p.name: wire_form(p, p.default)}), p.name) == p.default


def test_valid_values_describes_bounds():
    def text(**bounds: Any) -> str:
        return valid_values(Param(name="x", description="d", **bounds))

    assert text(type=int, minimum=1) == "positive integer"
    assert text(type=int, minimum=0) == "integer ≥ 0"
    assert text(type=float, minimum=0, maximum=1) == "float in [0, 1]"
    assert text(type=int, exclusive_minimum=1) == "integer > 1"
    assert text(type=str, choices=("a", "b")) == "one of a, b"


def test_non_finite_floats_are_rejected_even_without_bounds():
    # Every float parameter has bounds today, which reject these too; parsing must not rely on it.
    for value in (float("nan"), float("inf"), -float("inf"), "1e999", 10**400):
        with pytest.raises((ValueError, OverflowError)):
            _to_float(value)


# --- parsing ------------------------------------------------------------------------------------


def test_defaults_are_applied():
    hp = parse_hyperparameters(REQUIRED)
    assert (hp.num_classes, hp.num_training_samples) == (10, 1000)
    for name, default in SPEC_DEFAULTS.items():
        assert getattr(hp, name) == default, name
        assert type(getattr(hp, name)) is type(default), name


def test_null_means_unset():
    assert parse(epochs=None, resize=None) == parse()


def test_strings_and_native_types_give_the_same_values():
    assert set(STRINGS) == set(NAMES)
    from_strings = parse_hyperparameters(STRINGS)
    assert from_strings == parse_hyperparameters(NATIVE)
    assert from_strings.epochs == 12
    assert from_strings.eps == pytest.approx(1e-7)
    assert from_strings.early_stopping is True
    assert from_strings.use_pretrained_model is False
    assert from_strings.multi_label is True
    assert from_strings.image_shape == (3, 32, 32)
    assert from_strings.lr_scheduler_step == (4, 8)
    assert from_strings.augmentation_type == "crop_color"


ACCEPTED = [
    ("epochs", "30.0", 30),
    ("epochs", 30.0, 30),
    ("epochs", " 30 ", 30),
    ("epochs", "+30", 30),
    ("num_layers", "152.0", 152),
    ("learning_rate", "1e-3", 0.001),
    ("learning_rate", ".5", 0.5),
    ("learning_rate", "1", 1.0),
    ("learning_rate", 0, 0.0),
    ("early_stopping", "true", True),
    ("early_stopping", "false", False),
    ("early_stopping", "False", False),
    ("early_stopping", "1", True),
    ("early_stopping", "0", False),
    ("early_stopping", True, True),
    ("early_stopping", 0, False),
    ("multi_label", True, True),
    ("multi_label", 1, True),
    ("multi_label", "0", False),
    ("image_shape", "1,28,28", (1, 28, 28)),
    ("image_shape", " 3, 64 ,32 ", (3, 64, 32)),
    ("lr_scheduler_step", "", ()),
    ("lr_scheduler_step", "5", (5,)),
    ("lr_scheduler_step", 5, (5,)),
    ("lr_scheduler_step", " 10 , 20 ", (10, 20)),
    ("optimizer", " nag ", "nag"),
]


@pytest.mark.parametrize(("name", "written", "expected"), ACCEPTED)
def test_accepted_forms(name: str, written: Any, expected: Any):
    value = getattr(parse(**{name: written}), name)
    assert value == expected
    assert type(value) is type(expected)


def invalid_values(p: Param) -> list[Any]:
    """Values that `p` must reject, derived from its declaration."""
    wrong_types: list[Any] = [[1], {"a": 1}]
    if p.kind is Kind.TRUE_FALSE:
        return [*wrong_types, "yes", "TRUE", "2", 2, 1.0, ""]
    if p.kind is Kind.ZERO_ONE:
        return [*wrong_types, "True", "true", "False", "2", 2, -1, "0.5", ""]
    if p.kind is Kind.IMAGE_SHAPE:
        bad = ["3,224", "2,224,224", "3,7,224", "3,224,7", "a,b,c", "3x224x224", "3,224,224,1"]
        return [*wrong_types, *bad, "", 3]
    if p.kind is Kind.EPOCH_LIST:
        return [*wrong_types, "20,10", "10,10", "0", "-1,5", "a", "10;20", "10,", True, 1.5]
    if p.choices:
        return [*wrong_types, "nope", str(p.choices[0]).upper() + "x", "", True]
    values = [*wrong_types, "abc", "", "nan", "inf", float("nan"), float("inf"), True, "1,5"]
    if p.minimum is not None:
        values.append(p.minimum - (1 if p.type is int else 0.5))
    if p.maximum is not None:
        values += [p.maximum + 0.5, str(p.maximum + 0.5)]
    if p.exclusive_minimum is not None:
        values += [p.exclusive_minimum, str(p.exclusive_minimum)]
    if p.type is int:
        values += ["1.5", 2.5, "1e3"]
    return values


CASES = [(p, v) for p in PARAMS for v in invalid_values(p)]


@pytest.mark.parametrize(("p", "value"), CASES, ids=[f"{p.name}={v!r}" for p, v in CASES])
def test_invalid_value_is_reported_with_name_value_and_valid_values(p: Param, value: Any):
    (message,) = violations(**{p.name: value})
    assert message.startswith(f"{p.name}: ")
    assert repr(value) in message
    assert valid_values(p) in message


BOUNDS = [
    (p, bound)
    for p in PARAMS
    for bound in (p.minimum, p.maximum, (p.exclusive_minimum or 0) + 1 if p.type is int else None)
    if bound is not None and p.kind is None and not p.choices
]


@pytest.mark.parametrize(("p", "bound"), BOUNDS, ids=[f"{p.name}={b}" for p, b in BOUNDS])
def test_bounds_are_inclusive_where_the_spec_says_so(p: Param, bound: float):
    try:
        hp = parse(**{p.name: str(bound)})
    except HyperparameterError as error:  # a rule spanning several parameters may still object
        assert not [v for v in error.violations if v.startswith(f"{p.name}: got")]
    else:
        assert getattr(hp, p.name) == bound


@pytest.mark.parametrize("name", list(REQUIRED))
@pytest.mark.parametrize("absent", ["left out", None])
def test_missing_required_parameter(name: str, absent: str | None):
    raw = {**REQUIRED}
    if absent is None:
        raw[name] = None
    else:
        del raw[name]
    with pytest.raises(HyperparameterError) as caught:
        parse_hyperparameters(raw)
    (message,) = caught.value.violations
    assert message.startswith(f"{name}: missing")
    assert "required" in message


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("epoch", "epochs"), ("Learning_Rate", "learning_rate"), ("num_layer", "num_layers")],
)
def test_unknown_name_suggests_the_closest_one(name: str, suggestion: str):
    (message,) = violations(**{name: "7"})
    assert message.startswith(f"{name}: unknown hyperparameter")
    assert "'7'" in message
    assert f"did you mean '{suggestion}'?" in message


def test_unknown_name_without_a_close_match_has_no_suggestion():
    (message,) = violations(completely_unrelated_xyz="1")
    assert "unknown hyperparameter" in message
    assert "did you mean" not in message


def test_names_sagemaker_injects_are_ignored():
    injected = {
        "sagemaker_region": "us-east-1",
        "sagemaker_container_log_level": "20",
        "_tuning_objective_metric": "validation:accuracy",
    }
    assert parse(**injected) == parse()


@pytest.mark.parametrize("name", ["sagemakerregion", "_tuning_objective_metric_x", "tuning"])
def test_names_resembling_injected_ones_are_unknown(name: str):
    (message,) = violations(**{name: "x"})
    assert message.startswith(f"{name}: unknown")


def test_all_violations_are_reported_together():
    raw = {"num_training_samples": "1000", "epochs": "0", "optimizer": "bad", "foo": "1"}
    raw |= {"resize": "100", "top_k": "1"}
    with pytest.raises(HyperparameterError) as caught:
        parse_hyperparameters(raw)
    found = caught.value.violations
    assert isinstance(caught.value, ClientError)
    assert len(found) == 6
    for name in ("foo", "num_classes", "epochs", "optimizer", "top_k", "resize"):
        assert sum(v.startswith(f"{name}") for v in found) == 1, name
        assert name in str(caught.value)
    assert str(caught.value).startswith("6 invalid hyperparameter(s)")


def test_hyperparameters_is_frozen_and_picklable():
    hp = parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.epochs = 3
    assert pickle.loads(pickle.dumps(hp)) == hp


def test_shape_properties():
    hp = parse(image_shape="1,28,32", num_layers="20")
    assert (hp.channels, hp.height, hp.width) == (1, 28, 32)


def test_as_dict_is_json_and_parses_back():
    hp = parse_hyperparameters(STRINGS)
    config = json.loads(json.dumps(hp.as_dict()))
    assert list(config) == NAMES
    assert config["image_shape"] == "3,32,32"
    assert config["lr_scheduler_step"] == "4,8"
    assert config["epochs"] == 12
    assert parse_hyperparameters(config) == hp
    assert parse().as_dict()["lr_scheduler_step"] is None


# --- rules spanning several parameters ----------------------------------------------------------


def test_checkpoint_frequency_at_most_epochs():
    (message,) = violations(checkpoint_frequency="31")
    assert "checkpoint_frequency='31'" in message
    assert "epochs=30 (default)" in message
    (message,) = violations(checkpoint_frequency="6", epochs="5")
    assert "epochs='5'" in message
    assert parse(checkpoint_frequency="30").checkpoint_frequency == 30


def test_lr_scheduler_steps_before_last_epoch():
    (message,) = violations(lr_scheduler_step="10,30")
    assert message.startswith("lr_scheduler_step='10,30'")
    assert "epochs=30" in message
    assert violations(lr_scheduler_step="10,20", epochs="15")
    assert parse(lr_scheduler_step="10,29").lr_scheduler_step == (10, 29)


def test_lr_scheduler_steps_positive_and_strictly_increasing():
    for steps in ("20,10", "10,10", "0,10"):
        (message,) = violations(lr_scheduler_step=steps)
        assert "strictly increasing" in message


def test_resize_larger_than_height_and_width():
    (message,) = violations(resize="224")
    assert "resize='224'" in message
    assert "image_shape=3,224,224 (default)" in message
    assert parse(resize="225").resize == 225
    assert violations(resize="40", image_shape="3,32,64", num_layers="20")
    assert parse(resize="65", image_shape="3,32,64", num_layers="20").resize == 65


def test_pretrained_model_needs_a_large_image_depth():
    (message,) = violations(use_pretrained_model="1", num_layers="20")
    assert message.startswith("num_layers='20'")
    assert "18, 34, 50, 101, 152, 200" in message
    assert parse(use_pretrained_model="1", num_layers="50").num_layers == 50
    assert parse(use_pretrained_model="0", num_layers="20", image_shape="3,32,32")


@pytest.mark.parametrize("shape", ["3,32,32", "1,224,224", "3,224,256"])
def test_pretrained_model_needs_3_224_224(shape: str):
    (message,) = violations(use_pretrained_model="1", image_shape=shape)
    assert message.startswith(f"image_shape={shape!r}")
    assert "3,224,224" in message


def test_weighted_loss_needs_multi_label():
    (message,) = violations(use_weighted_loss="1")
    assert "use_weighted_loss='1'" in message
    assert "multi_label" in message
    assert parse(use_weighted_loss="1", multi_label="1").use_weighted_loss is True


def test_top_k_at_most_num_classes():
    (message,) = violations(top_k="11")
    assert "top_k='11'" in message
    assert "num_classes='10'" in message
    assert parse(top_k="10").top_k == 10


@pytest.mark.parametrize("shape", ["2,224,224", "4,224,224", "3,7,224", "3,224,7", "0,8,8"])
def test_image_shape_channels_and_sides(shape: str):
    (message,) = violations(image_shape=shape)
    assert message.startswith("image_shape: got")


def test_rules_skip_parameters_that_are_already_invalid():
    (message,) = violations(epochs="x", checkpoint_frequency="50", lr_scheduler_step="40")
    assert message.startswith("epochs: got 'x'")


# --- warnings -----------------------------------------------------------------------------------


def test_no_warnings_for_defaults(warnings_logged):
    parse()
    assert not warnings_logged()


@pytest.mark.parametrize(
    ("layers", "shape", "warned"),
    [
        ("20", "3,224,224", True),
        ("110", "3,65,64", True),
        ("20", "3,64,64", False),
        ("20", "1,28,28", False),
        ("152", "3,32,32", True),
        ("18", "3,64,64", True),
        ("18", "3,64,65", False),
        ("152", "3,224,224", False),
    ],
)
def test_depth_family_mismatch_warns(warnings_logged, layers: str, shape: str, warned: bool):
    parse(num_layers=layers, image_shape=shape)
    found = [m for m in warnings_logged() if f"num_layers={layers!r}" in m]
    assert bool(found) is warned


def test_early_stopping_options_without_early_stopping_warn(warnings_logged):
    parse(early_stopping_patience="3")
    (message,) = warnings_logged()
    assert "early_stopping_patience='3'" in message
    assert "no effect" in message


def test_early_stopping_options_with_early_stopping_do_not_warn(warnings_logged):
    parse(early_stopping="True", early_stopping_patience="3")
    assert not warnings_logged()


def test_kv_store_on_a_single_host_warns(warnings_logged):
    parse(RunContext(num_hosts=1), kv_store="dist_sync")
    (message,) = warnings_logged()
    assert "kv_store='dist_sync'" in message
    assert "one-worker" in message


@pytest.mark.parametrize("context", [None, RunContext(num_hosts=2)])
def test_kv_store_on_several_hosts_or_without_context_does_not_warn(warnings_logged, context):
    parse(context, kv_store="dist_async")
    assert not warnings_logged()


# --- rules that need the run's environment ------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-image",
        "image/jpeg",
        "image/png",
        "Application/X-Image; label-format=class-id",
    ],
)
def test_resize_required_with_image_content_types(content_type: str):
    context = RunContext(content_types={"train": content_type, "model": "application/x-sagemaker"})
    (message,) = violations(context)
    assert message.startswith("resize: missing")
    assert "'train'" in message
    assert "'model'" not in message
    assert parse(context, resize="256").resize == 256


@pytest.mark.parametrize(
    "context",
    [None, RunContext(content_types={"train": "application/x-recordio"}), RunContext()],
)
def test_resize_optional_otherwise(context: RunContext | None):
    assert parse(context).resize is None


def test_float16_needs_a_gpu():
    (message,) = violations(RunContext(num_gpus=0), precision_dtype="float16")
    assert "precision_dtype='float16'" in message
    assert "use precision_dtype=float32 on CPU, or run on a GPU instance" in message
    assert parse(RunContext(num_gpus=1), precision_dtype="float16").precision_dtype == "float16"
    assert parse(precision_dtype="float16").precision_dtype == "float16"


def test_early_stopping_needs_a_validation_channel():
    (message,) = violations(RunContext(has_validation=False), early_stopping="True")
    assert "early_stopping='True'" in message
    assert "validation" in message
    assert parse(RunContext(has_validation=True), early_stopping="True").early_stopping
    assert not parse(RunContext(has_validation=False)).early_stopping


# --- documents derived from the table -----------------------------------------------------------


def test_markdown_table_has_a_row_per_parameter():
    lines = markdown_table().splitlines()
    assert lines[0] == "| name | required | type / valid values | default | description |"
    rows = lines[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == NAMES
    assert all(row.count(" | ") == 4 for row in rows)
    by_name = {row.split(" | ")[0].removeprefix("| "): row.split(" | ") for row in rows}
    assert by_name["num_classes"][1:4] == ["yes", "positive integer", "—"]
    assert by_name["epochs"][1:4] == ["no", "positive integer", "30"]
    assert by_name["image_shape"][3] == "3,224,224"
    assert by_name["early_stopping"][3] == "False"
    assert by_name["multi_label"][3] == "0"


def test_json_schema_lists_every_parameter():
    schema = json_schema()
    json.dumps(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert list(schema["properties"]) == NAMES
    assert schema["required"] == list(REQUIRED)
    assert schema["additionalProperties"] is False
    assert set(schema["patternProperties"]) == {"^sagemaker_", "^_tuning_objective_metric$"}
    assert schema["properties"]["epochs"]["default"] == "30"


def string_pattern(name: str) -> str:
    """The pattern of the string form of one property of the schema."""
    forms = json_schema()["properties"][name]["anyOf"]
    (form,) = (f for f in forms if f.get("type") == "string")
    return form["pattern"]


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: p.name)
def test_json_schema_string_pattern_accepts_valid_forms(p: Param):
    pattern = re.compile(string_pattern(p.name))
    assert pattern.search(STRINGS[p.name])
    if p.default is not None:
        assert pattern.search(wire_form(p, p.default))
    for name, written, _ in ACCEPTED:
        if name == p.name and isinstance(written, str):
            assert pattern.search(written), written
    assert not pattern.search("not valid!")


WORD_PARAMS = [p for p in PARAMS if p.kind in (Kind.TRUE_FALSE, Kind.ZERO_ONE) or p.type is str]


@pytest.mark.parametrize("p", WORD_PARAMS, ids=lambda p: p.name)
def test_json_schema_string_pattern_rejects_invalid_words(p: Param):
    pattern = re.compile(string_pattern(p.name))
    for value in invalid_values(p):
        if isinstance(value, str):
            assert not pattern.search(value), value


def test_json_schema_validates_with_jsonschema():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema())
    validator.check_schema(json_schema())
    good = [STRINGS, NATIVE, {**REQUIRED, "sagemaker_region": "x", "_tuning_objective_metric": "y"}]
    for config in good:
        assert not list(validator.iter_errors(config))
    bad = [
        {**REQUIRED, "epochs": "x"},
        {**REQUIRED, "epochs": 0},
        {**REQUIRED, "optimizer": "bad"},
        {**REQUIRED, "epoch": "3"},
        {"num_classes": "10"},
    ]
    for config in bad:
        assert list(validator.iter_errors(config)), config


# --- properties ---------------------------------------------------------------------------------


def parse_or_error(raw: dict[str, Any], context: RunContext | None = None) -> None:
    """Parsing either succeeds (and round-trips) or raises HyperparameterError, nothing else."""
    try:
        hp = parse_hyperparameters(raw, context)
    except HyperparameterError as error:
        assert error.violations
        assert all(isinstance(v, str) and v for v in error.violations)
        return
    assert isinstance(hp, Hyperparameters)
    assert parse_hyperparameters(json.loads(json.dumps(hp.as_dict()))) == hp


VALID_STRINGS = sorted(set(STRINGS.values()) | {"0", "1", "True", "3,224,224", "10,20"})
values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(VALID_STRINGS),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
    st.booleans(),
    st.none(),
)
contexts = st.one_of(
    st.none(),
    st.builds(
        RunContext,
        content_types=st.dictionaries(
            st.sampled_from(["train", "validation", "model"]),
            st.sampled_from(["application/x-image", "application/x-recordio", "image/png; x=1"]),
        ),
        num_gpus=st.integers(0, 2),
        num_hosts=st.integers(1, 3),
        has_validation=st.booleans(),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=24), st.text(max_size=24), max_size=6))
def test_arbitrary_strings_never_crash(raw: dict[str, str]):
    parse_or_error(raw)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(NAMES), values, max_size=12),
    st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=2),
    st.sampled_from([{}, REQUIRED]),
    contexts,
)
def test_mixed_valid_and_arbitrary_values_never_crash(known, unknown, base, context):
    parse_or_error({**unknown, **base, **known}, context)


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1))
def test_float_strings_round_trip(number: float):
    assert parse(learning_rate=repr(number)).learning_rate == number
    assert parse(learning_rate=number).learning_rate == number
