"""Which channels a job has, and the errors for channels that cannot work."""

import pytest

from imgcls.config.channels import discover_channels
from imgcls.config.environment import paths_from_env, read_input_data_config
from imgcls.errors import ClientError


def channels_of(job):
    paths = paths_from_env({"SAGEMAKER_BASE_DIR": str(job.base)})
    return discover_channels(paths, read_input_data_config(paths))


def test_guessed_from_folders_without_inputdataconfig(make_job) -> None:
    job = make_job()
    job.rec_channel("train", [0, 1])
    job.rec_channel("validation", [0, 1])
    channels = channels_of(job)
    assert sorted(channels) == ["train", "validation"]
    assert all(c.is_recordio and not c.config.is_pipe for c in channels.values())


def test_image_channels_guessed_when_lst_folders_exist(make_job) -> None:
    job = make_job()
    (job.data / "train").mkdir()
    (job.data / "train" / "a.jpg").write_bytes(b"x")
    (job.data / "train_lst").mkdir()
    (job.data / "train_lst" / "train.lst").write_text("0\t0\ta.jpg\n")
    channels = channels_of(job)
    assert channels["train"].is_image


def test_missing_data_folder(make_job) -> None:
    job = make_job()
    job.data.rmdir()
    with pytest.raises(ClientError, match="data folder .* does not exist"):
        channels_of(job)


def test_missing_train_channel_and_unknown_channel_reported_together(make_job) -> None:
    job = make_job()
    job.rec_channel("valdation", [0])
    with pytest.raises(ClientError) as error:
        channels_of(job)
    message = str(error.value)
    assert "'train' channel is required" in message
    assert "Unknown channel 'valdation'" in message and "Did you mean 'validation'" in message


def test_configured_channel_folder_missing_or_empty(make_job) -> None:
    job = make_job()
    job.input_data_config(
        {
            "train": {"ContentType": "application/x-recordio"},
            "validation": {"ContentType": "application/x-recordio"},
        }
    )
    (job.data / "train").mkdir()
    with pytest.raises(ClientError) as error:
        channels_of(job)
    assert f"folder {job.data / 'train'} holds no files" in str(error.value)
    assert f"folder {job.data / 'validation'} does not exist" in str(error.value)


def test_wrong_content_type_and_image_channel_without_lst(make_job) -> None:
    job = make_job()
    job.rec_channel("train", [0])
    job.rec_channel("validation", [0])
    job.input_data_config(
        {
            "train": {"ContentType": "text/csv"},
            "validation": {"ContentType": "image/jpeg"},
        }
    )
    with pytest.raises(ClientError) as error:
        channels_of(job)
    assert "'train' has content type 'text/csv'" in str(error.value)
    assert "needs a 'validation_lst' channel" in str(error.value)


def test_pipe_channel_needs_no_folder(make_job) -> None:
    job = make_job()
    job.input_data_config(
        {"train": {"ContentType": "application/x-recordio", "TrainingInputMode": "Pipe"}}
    )
    assert channels_of(job)["train"].config.is_pipe
