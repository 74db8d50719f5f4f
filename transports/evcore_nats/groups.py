"""Partition ownership for JetStream consumer groups: leases kept in a KV bucket.

JetStream balances messages between the subscribers of one consumer, not keys; evcore needs
every event of a task to reach the same State, so a group's members split the *partitions*
and each partition has one owner at a time. The group's whole ownership record is one KV
entry (``{"members": {name: expiry}, "leases": {partition: [owner, expiry]}, "consumers":
{partition: consumer}}``, times in wall-clock seconds), changed only by compare-and-set on
its revision, so two members never both win a partition. ``consumers`` names the durable
consumer that holds each partition's acknowledged position; every owner reads through a
consumer of its own, so acknowledgements from a previous owner that merely stalled land on a
consumer nobody reads any more. :func:`plan` is the rule every member applies to it, pure so that it
is tested without a server:

- a member renews its own membership and its leases whenever it rebalances (from
  ``receive()``); members and leases past their expiry are dropped (the member died);
- each live member owns at most ``ceil(partitions / members)``: one owning more gives the
  extra ones up (after telling its consumer), one owning fewer takes free ones, looking from
  its own place in the sorted member list;
- a member joins (is counted among the members) as soon as it subscribes, so members
  started together split the partitions at their first rebalance.

Members on different hosts compare wall-clock expiries: their clocks must agree to well
within the lease (NTP does).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GroupState", "Plan", "group_key", "join", "plan", "release"]


def group_key(group: str) -> str:
    """A KV key and consumer-name stem for a group name of any text (bounded, plain)."""
    return "g" + hashlib.sha256(group.encode("utf-8", "surrogatepass")).hexdigest()[:24]


@dataclass
class GroupState:
    """The ownership record of one group."""

    members: dict[str, float] = field(default_factory=dict)
    leases: dict[int, tuple[str, float]] = field(default_factory=dict)
    consumers: dict[int, str] = field(default_factory=dict)

    @classmethod
    def decode(cls, raw: bytes | None) -> GroupState:
        """The record stored as ``raw`` (an empty record for nothing or garbage)."""
        if not raw:
            return cls()
        try:
            data: Any = json.loads(raw)
            members = {str(k): float(v) for k, v in data["members"].items()}
            leases = {int(p): (str(o), float(e)) for p, (o, e) in data["leases"].items()}
            consumers = {int(p): str(c) for p, c in data.get("consumers", {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()
        return cls(members, leases, consumers)

    def encode(self) -> bytes:
        leases = {str(p): [owner, expiry] for p, (owner, expiry) in sorted(self.leases.items())}
        consumers = {str(p): name for p, name in sorted(self.consumers.items())}
        return json.dumps(
            {"members": self.members, "leases": leases, "consumers": consumers}
        ).encode()


@dataclass(frozen=True)
class Plan:
    """What a member does after a rebalance: the partitions it keeps, takes, must give up
    (``extra``: it still holds their leases until it has told its consumer) and has lost
    (leases that expired under it)."""

    keep: frozenset[int]
    taken: frozenset[int]
    extra: frozenset[int]
    lost: frozenset[int]


def plan(
    state: GroupState,
    member: str,
    owned: frozenset[int],
    partitions: int,
    now: float,
    lease: float,
) -> Plan:
    """Apply the ownership rule for ``member`` (which thinks it owns ``owned``) to
    ``state`` in place, and say what changed for it."""
    state.members[member] = now + lease
    for name, expiry in list(state.members.items()):
        if expiry < now:
            del state.members[name]
    for partition, (owner, expiry) in list(state.leases.items()):
        if expiry < now or owner not in state.members or not 0 <= partition < partitions:
            del state.leases[partition]
    mine = sorted(p for p, (owner, _) in state.leases.items() if owner == member)
    fair = math.ceil(partitions / len(state.members))
    keep, extra = mine[:fair], mine[fair:]
    for partition in mine:
        state.leases[partition] = (member, now + lease)
    # Each member looks for free partitions from its own place (its rank among the members
    # times its share), so members that start together do not all reach for the same ones.
    start = sorted(state.members).index(member) * fair
    free = [
        p % partitions
        for p in range(start, start + partitions)
        if p % partitions not in state.leases
    ]
    taken = free[: max(0, fair - len(keep))]
    for partition in taken:
        state.leases[partition] = (member, now + lease)
    return Plan(
        keep=frozenset(keep),
        taken=frozenset(taken),
        extra=frozenset(extra),
        lost=owned - frozenset(mine),
    )


def join(state: GroupState, member: str, now: float, lease: float) -> None:
    """Count ``member`` among the live members (it takes partitions when it rebalances)."""
    state.members[member] = now + lease


def release(state: GroupState, member: str, partitions: frozenset[int] | None = None) -> None:
    """Drop ``member``'s leases on ``partitions`` (all of them, and its membership, when
    ``None``)."""
    for partition, (owner, _) in list(state.leases.items()):
        if owner == member and (partitions is None or partition in partitions):
            del state.leases[partition]
    if partitions is None:
        state.members.pop(member, None)
