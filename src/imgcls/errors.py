"""The two kinds of failure a job can end with, as SageMaker's built-in algorithms name them."""


class ImgclsError(Exception):
    """Base of every error imgcls raises on purpose."""

    kind = "AlgorithmError"


class ClientError(ImgclsError):
    """The user's mistake: bad hyperparameters, channels, data, payloads or archives."""

    kind = "ClientError"


class AlgorithmError(ImgclsError):
    """Our mistake, or something the user cannot fix by changing the inputs."""

    kind = "AlgorithmError"


class HyperparameterError(ClientError):
    """One or more hyperparameters are invalid; `violations` lists every one of them."""

    def __init__(self, violations: list[str]):
        self.violations = list(violations)
        lines = "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(f"{len(self.violations)} invalid hyperparameter(s):\n{lines}")


class TrainingInterrupted(Exception):
    """SIGTERM stopped training; a resumable state was saved. Not a failure of the job."""

    exit_code = 143

    def __init__(self, epoch: int):
        self.epoch = epoch
        super().__init__(f"training stopped by SIGTERM during epoch {epoch}")
