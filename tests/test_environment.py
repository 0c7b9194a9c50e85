"""The /opt/ml contract: paths under SAGEMAKER_BASE_DIR and the config files."""

from pathlib import Path

import pytest

from imgcls.config.environment import (
    ChannelConfig,
    paths_from_env,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
)
from imgcls.errors import ClientError


def test_base_dir_defaults_to_opt_ml_and_moves_with_the_variable(tmp_path: Path) -> None:
    assert paths_from_env({}).base == Path("/opt/ml")
    paths = paths_from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert paths.hyperparameters_file == tmp_path / "input/config/hyperparameters.json"
    assert paths.failure_file == tmp_path / "output/failure"
    assert paths.pipe_path("train", 3) == tmp_path / "input/data/train_3"
    assert paths.local_model_tar == tmp_path / "output/model.tar.gz"


def test_missing_config_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="config folder .*does not exist"):
        read_hyperparameters(paths_from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)}))


def test_missing_hyperparameters_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "input/config").mkdir(parents=True)
    with pytest.raises(ClientError, match="hyperparameters.json does not exist"):
        read_hyperparameters(paths_from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        ('{"epochs": "3",\n "x": }', "not valid JSON: .* line 2, column"),
        ('["epochs"]', "must hold a JSON object, not list"),
    ],
)
def test_malformed_json_names_file_and_position(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "input/config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(text)
    with pytest.raises(ClientError, match=message) as error:
        read_hyperparameters(paths_from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)}))
    assert "hyperparameters.json" in str(error.value)


def test_input_data_config_absent_means_none_and_present_is_parsed(tmp_path: Path) -> None:
    paths = paths_from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    paths.config_dir.mkdir(parents=True)
    assert read_input_data_config(paths) is None
    paths.inputdataconfig_file.write_text(
        '{"train": {"ContentType": "application/x-image; label-format=class-id",'
        ' "TrainingInputMode": "Pipe", "RecordWrapperType": "RecordIO"}, "validation": {}}'
    )
    channels = read_input_data_config(paths)
    assert channels["train"].media_type == "application/x-image"
    assert channels["train"].content_type_params == {"label-format": "class-id"}
    assert channels["train"].is_pipe
    assert channels["validation"] == ChannelConfig("validation")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('{"TrainingInputMode": "Stream"}', "TrainingInputMode is 'Stream'; valid values: File"),
        ('{"S3DistributionType": "x"}', "S3DistributionType is 'x'"),
        ('{"RecordWrapperType": "Protobuf"}', "RecordWrapperType is 'Protobuf'"),
        ('"application/x-image"', "expected a JSON object"),
    ],
)
def test_bad_channel_entry_is_a_client_error(tmp_path: Path, entry: str, message: str) -> None:
    paths = paths_from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    paths.config_dir.mkdir(parents=True)
    paths.inputdataconfig_file.write_text(f'{{"train": {entry}}}')
    with pytest.raises(ClientError, match=message):
        read_input_data_config(paths)


def test_resource_config(tmp_path: Path) -> None:
    paths = paths_from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    paths.config_dir.mkdir(parents=True)
    single = read_resource_config(paths)
    assert single.hosts == ("algo-1",) and single.is_leader and not single.is_distributed
    paths.resourceconfig_file.write_text(
        '{"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}'
    )
    two = read_resource_config(paths)
    assert two.is_distributed and not two.is_leader
    paths.resourceconfig_file.write_text('{"current_host": "algo-9", "hosts": ["algo-1"]}')
    with pytest.raises(ClientError, match="algo-9"):
        read_resource_config(paths)
