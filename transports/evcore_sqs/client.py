"""boto3 behind a narrow seam: importing it lazily, building clients, mapping its errors."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from evcore.errors import (
    ChannelError,
    ConnectionLost,
    InvalidURL,
    MissingDependency,
    TransportError,
)
from evcore_sqs.settings import SqsSettings

__all__ = ["clients_for", "is_missing_queue", "load_boto3", "translate"]

INSTALL_HINT = "pip install 'evcore[sqs]'"

#: Error codes a later attempt may not meet: throttling and the service's own trouble.
_TEMPORARY = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KMSThrottling",
}
#: Codes of a queue (or topic) that is gone: someone deleted it, a sweep took it for dead.
_MISSING = {
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NotFound",
    "NotFoundException",
}


def load_boto3() -> ModuleType:
    """Import boto3, or raise MissingDependency with the line that installs it."""
    try:
        import boto3  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError as exc:
        raise MissingDependency(
            f"the SQS transport needs boto3, which is not installed: {INSTALL_HINT}"
        ) from exc
    return boto3


def clients_for(settings: SqsSettings) -> tuple[Any, Any]:
    """New SNS and SQS clients for ``settings`` (no I/O yet). boto3's retries are off:
    evcore's core retries with backoff."""
    boto3 = load_boto3()
    import botocore.config  # noqa: PLC0415

    config = botocore.config.Config(
        connect_timeout=settings.connect_timeout,
        read_timeout=max(settings.read_timeout, settings.wait_time_seconds + 10),
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        region_name=settings.region,
    )
    try:
        sns = session.client(
            "sns", endpoint_url=settings.sns_endpoint_url or settings.endpoint_url, config=config
        )
        sqs = session.client(
            "sqs", endpoint_url=settings.sqs_endpoint_url or settings.endpoint_url, config=config
        )
    except botocore.exceptions.NoRegionError:
        raise InvalidURL(
            "the SQS transport needs a region: add region=... to the URL or set AWS_DEFAULT_REGION"
        ) from None
    return sns, sqs


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, else ``""``."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def is_missing_queue(exc: BaseException) -> bool:
    """Whether ``exc`` says the queue or topic does not exist (any more)."""
    return error_code(exc) in _MISSING


def translate(exc: BaseException, doing: str, settings: SqsSettings) -> TransportError:
    """Map a botocore failure onto evcore's errors.

    Unreachable endpoints, timeouts, throttling, the service's own errors and a queue that
    is gone (a reconnect makes a new one) are ConnectionLost; refusals (access denied, bad
    parameters, missing credentials) are ChannelError.
    """
    import botocore.exceptions  # noqa: PLC0415

    where = settings.address
    code = error_code(exc)
    temporary = (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
        OSError,
    )
    status = 0
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if isinstance(exc, temporary) or code in _TEMPORARY or code in _MISSING or status >= 500:
        return ConnectionLost(f"lost SNS/SQS at {where} while {doing}: {exc}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ChannelError(
            f"no AWS credentials for SNS/SQS while {doing}: put them in the URL "
            "(sqs://key:secret@) or in the environment"
        )
    return ChannelError(f"SNS/SQS at {where} refused {doing}: {exc}")
