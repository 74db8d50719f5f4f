"""Cluster state from events: workers, tasks, indexes, snapshots and a camera.

The public names mirror ``celery.events.state`` and ``celery.events.snapshot``; see
``docs/state.md`` for a guide and ``docs/compat.md`` for the differences from Celery.
"""

from evcore.state.camera import Camera, Polaroid
from evcore.state.cluster import LRUMapping, State
from evcore.state.index import TaskIndex, TaskSet
from evcore.state.states import (
    ALL_STATES,
    CELERY_ORDERING,
    EXCEPTION_STATES,
    FAILURE,
    IGNORED,
    PENDING,
    PRECEDENCE,
    PROPAGATE_STATES,
    READY_STATES,
    RECEIVED,
    REJECTED,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    TASK_EVENT_TO_STATE,
    TERMINAL_ORDERING,
    UNREADY_STATES,
    Ordering,
    precedence,
)
from evcore.state.task import Task
from evcore.state.worker import HEARTBEAT_EXPIRE_WINDOW, Worker, heartbeat_expires

__all__ = [
    "ALL_STATES",
    "CELERY_ORDERING",
    "EXCEPTION_STATES",
    "FAILURE",
    "HEARTBEAT_EXPIRE_WINDOW",
    "IGNORED",
    "PENDING",
    "PRECEDENCE",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "TASK_EVENT_TO_STATE",
    "TERMINAL_ORDERING",
    "UNREADY_STATES",
    "Camera",
    "LRUMapping",
    "Ordering",
    "Polaroid",
    "State",
    "Task",
    "TaskIndex",
    "TaskSet",
    "Worker",
    "heartbeat_expires",
    "precedence",
]
