"""ImageNet weights for `use_pretrained_model=1`, read from a local folder, never downloaded.

The files are the Gluon model zoo's own ResNet v2 weights, under the model zoo's own names
(`resnet18_v2-a81db45f.params`: the name, then the first 8 hex digits of the file's SHA-1), as
listed in MXNet 1.9.1's `mxnet/gluon/model_zoo/model_store.py`. The image downloads them when it is
built; `python -m imgcls.model.pretrained [DEPTH ...]` prints the `URL SHA-1 FILE` lines that build
step reads with only this file and errors.py: other imports wait until weights are loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from imgcls.errors import ClientError

if TYPE_CHECKING:
    import mxnet as mx

    from imgcls.model.networks import ImageClassifier

# SHA-1 of each model-zoo `resnet{N}_v2` file, from MXNet 1.9.1's model_store._model_sha1.
ZOO_SHA1 = {
    18: "a81db45fd7b7a2d12ab97cd88ef0a5ac48b8f657",
    34: "9d6b80bbc35169de6b6edecffdd6047c56fdd322",
    50: "ecdde35339c1aadbec4f547857078e734a76fb49",
    101: "18e93e4f48947e002547f50eabbcc9c83e516aa6",
    152: "f2695542de38cf7e71ed58f02893d82bb409415e",
}
# The model zoo's public address: `{ZOO_URL}{file name without .params}.zip` holds the file.
ZOO_URL = "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/models/"


def zoo_name(num_layers: int) -> str:
    """The model zoo's name of the ImageNet ResNet v2 of that depth, e.g. `resnet18_v2`."""
    return f"resnet{num_layers}_v2"


def file_name(num_layers: int) -> str:
    """The model zoo's file name for that depth, e.g. `resnet18_v2-a81db45f.params`."""
    if num_layers not in ZOO_SHA1:
        raise ClientError(_no_public_weights(num_layers))
    return f"{zoo_name(num_layers)}-{ZOO_SHA1[num_layers][:8]}.params"


def download_url(num_layers: int) -> str:
    """Where the model zoo publishes that file (zipped)."""
    return f"{ZOO_URL}{file_name(num_layers).removesuffix('.params')}.zip"


def manifest(depths: Iterable[int] = tuple(ZOO_SHA1)) -> str:
    """One `URL SHA-1 FILE` line per depth (default: every depth with public weights)."""
    return "".join(f"{download_url(n)} {ZOO_SHA1[n]} {file_name(n)}\n" for n in depths)


def _no_public_weights(num_layers: int) -> str:
    depths = ", ".join(map(str, ZOO_SHA1))
    return (
        f"use_pretrained_model=1 with num_layers={num_layers}: the Gluon model zoo publishes no "
        f"ImageNet weights for ResNet-{num_layers} v2 (only for depths {depths}). Choose one of "
        "those depths, or train from scratch with use_pretrained_model=0."
    )


def weights_file(num_layers: int, folder: Path) -> Path:
    """The weights file of that depth in `folder`; ClientError saying how to provide it."""
    path = folder / file_name(num_layers)
    if not path.is_file():
        raise ClientError(
            f"use_pretrained_model=1 with num_layers={num_layers} needs the ImageNet weights file "
            f"{path.name} in {folder}, which does not hold it. Bake it into the image (the "
            "Dockerfile's PRETRAINED_DEPTHS build argument, every depth by default), or download "
            f"{download_url(num_layers)} (the Gluon model zoo), unzip it into a folder and set "
            "IMGCLS_PRETRAINED_DIR to that folder; or train from scratch with "
            "use_pretrained_model=0."
        )
    return path


def load_imagenet_features(
    net: ImageClassifier,
    num_layers: int,
    folder: Path | None = None,
    ctx: list[mx.Context] | None = None,
) -> Path:
    """Load the ImageNet weights of `num_layers` into every layer of `net` but the classifier.

    `folder` defaults to IMGCLS_PRETRAINED_DIR (else the image's folder). The classifier keeps
    its own (random) initialisation for num_classes. Returns the file loaded.
    """
    from mxnet.base import MXNetError

    from imgcls.config.environment import pretrained_dir_from_env
    from imgcls.log import logger
    from imgcls.model.networks import load_pretrained_features

    folder = pretrained_dir_from_env() if folder is None else folder
    path = weights_file(num_layers, folder)
    try:
        load_pretrained_features(net, path, ctx)
    except (ValueError, MXNetError) as e:
        raise ClientError(
            f"{path} does not hold the model zoo's ResNet-{num_layers} v2 weights: {e}"
        ) from e
    logger.info(
        "Pretrained model: every layer but the classifier loaded from %s; the classifier "
        "is initialised at random.",
        path,
    )
    return path


if __name__ == "__main__":
    print(manifest([int(d) for d in sys.argv[1:]] or ZOO_SHA1), end="")
