"""evcore's AMQP 0-9-1 transport (RabbitMQ): ``amqp://``, ``amqps://``, ``pyamqp://``.

On the wire it is what Celery declares and sends: a durable ``topic`` exchange, one exclusive
auto-delete queue per receiver with ``x-message-ttl``/``x-expires``, raw JSON bodies with
Celery's message properties, consumed with ``no_ack``. See ``docs/transports/amqp.md``.
"""

from evcore_amqp.options import AMQPOptions, parse_url, queue_arguments
from evcore_amqp.publisher import PublishStats
from evcore_amqp.subscription import AMQPSubscription
from evcore_amqp.transport import AMQPTransport

__all__ = [
    "AMQPOptions",
    "AMQPSubscription",
    "AMQPTransport",
    "PublishStats",
    "parse_url",
    "queue_arguments",
]
