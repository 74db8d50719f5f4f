"""Amazon SQS transport for evcore, with SNS fan-out (``sqs://``).

Events are published to an SNS topic per exchange; every subscription reads an SQS queue
of its own subscribed to the topic, deleted when it closes. Needs boto3
(``pip install 'evcore[sqs]'``), imported on first use.
"""

from evcore_sqs.payload import MAX_BODY_SIZE, MAX_MESSAGE, filter_policy
from evcore_sqs.settings import SqsSettings, parse_settings, queue_name, topic_name
from evcore_sqs.subscription import SqsSubscription
from evcore_sqs.transport import SqsTransport

__all__ = [
    "MAX_BODY_SIZE",
    "MAX_MESSAGE",
    "SqsSettings",
    "SqsSubscription",
    "SqsTransport",
    "filter_policy",
    "parse_settings",
    "queue_name",
    "topic_name",
]
