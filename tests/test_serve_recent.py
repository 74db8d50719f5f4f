"""The recent index gives exactly Flower's newest-first order, whatever the disorder."""

from __future__ import annotations

from _serve_support import event
from hypothesis import given, settings
from hypothesis import strategies as st

from evcore.serve.api import index_candidates, newest_tasks, select_tasks
from evcore.serve.recent import BLOCK, RecentIndex
from evcore.state import State

#: (task number, timestamp offset, state) per event: timestamps jump back and forth, as
#: with skewed clocks, and tasks get several events.
EVENTS = st.lists(
    st.tuples(
        st.integers(0, 60),
        st.floats(-1e4, 1e4, allow_nan=False),
        st.sampled_from(["task-received", "task-started", "task-succeeded", "task-failed"]),
    ),
    min_size=1,
    max_size=300,
)


def feed(events: list[tuple[int, float, str]], max_tasks: int) -> tuple[State, RecentIndex]:
    state = State(max_tasks_in_memory=max_tasks)
    recent = RecentIndex(block=4)  # small blocks: the early stop is exercised
    for number, offset, type_ in events:
        result = state.event(
            event(
                type_,
                f"w{number % 3}@example",
                at=1e6 + offset,
                uuid=f"t{number}",
                name=f"proj.n{number % 4}",
            )
        )
        assert result is not None
        recent.add(result[0][0])
    return state, recent


@settings(max_examples=150, deadline=None)
@given(
    events=EVENTS,
    limit=st.integers(0, 30),
    offset=st.integers(0, 10),
    max_tasks=st.sampled_from([0, 5, 40]),
    name=st.sampled_from([None, "proj.n1", "PROJ.N2"]),
    state_filter=st.sampled_from([None, "SUCCESS", "started"]),
    worker=st.sampled_from([None, "w1@example", "W2@EXAMPLE"]),
)
def test_same_page_as_a_full_sort(
    events: list[tuple[int, float, str]],
    limit: int,
    offset: int,
    max_tasks: int,
    name: str | None,
    state_filter: str | None,
    worker: str | None,
) -> None:
    state, recent = feed(events, max_tasks)
    options = {
        "limit": limit,
        "offset": offset,
        "name": name,
        "worker": worker,
        "state": state_filter,
        "search": None,
    }
    tasks = state.tasks.data
    expected = select_tasks(list(tasks.values()), **options)
    assert newest_tasks(recent, tasks, **options) == expected
    # Ranking the candidates of the name and worker indexes gives the same page.
    by_name = index_candidates(state.tasks_by_type, name)
    by_worker = index_candidates(state.tasks_by_worker, worker)
    for candidates in (by_name, by_worker):
        assert newest_tasks(recent, tasks, candidates=candidates, **options) == expected
    recent.rebuild(tasks)  # compaction keeps the answer
    assert newest_tasks(recent, tasks, **options) == expected


def test_in_order_stream_stops_early() -> None:
    state = State(max_tasks_in_memory=None)
    recent = RecentIndex()
    for number in range(BLOCK * 20):
        result = state.event(
            event("task-received", at=1e6 + number, uuid=f"t{number}", name="proj.add")
        )
        assert result is not None
        recent.add(result[0][0])
    looked: list[str] = []

    class Watching(dict):  # type: ignore[type-arg]
        def get(self, key, default=None):  # type: ignore[no-untyped-def]
            looked.append(key)
            return super().get(key, default)

    page = recent.newest(Watching(state.tasks.data), 100)
    assert [task.uuid for task in page] == [
        f"t{n}" for n in range(BLOCK * 20 - 1, BLOCK * 20 - 101, -1)
    ]
    assert len(looked) <= 2 * BLOCK  # two blocks read, not twenty


def test_a_selective_filter_ranks_its_candidates() -> None:
    events = [(number, float((number * 7919) % 1000), "task-received") for number in range(400)]
    state = State(max_tasks_in_memory=None)
    recent = RecentIndex(block=8)
    for number, offset, type_ in events:
        result = state.event(
            event(
                type_,
                f"w{number % 3}@example",
                at=1e6 + offset,
                uuid=f"t{number}",
                name=f"proj.n{number % 20}",
            )
        )
        assert result is not None
        recent.add(result[0][0])
    tasks = state.tasks.data
    candidates = index_candidates(state.tasks_by_type, "PROJ.N7")
    assert candidates is not None and len(candidates) == 20  # few: ranked directly
    for limit, offset in ((5, 0), (5, 3), (100, 0)):
        options = {
            "limit": limit,
            "offset": offset,
            "name": "proj.n7",
            "worker": None,
            "state": None,
            "search": None,
        }
        expected = select_tasks(list(tasks.values()), **options)
        assert newest_tasks(recent, tasks, candidates=candidates, **options) == expected
    assert index_candidates(state.tasks_by_type, None) is None
