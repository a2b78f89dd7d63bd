"""The model thread: retrieval runs between the forwards of a running answer, and a running answer stops
at the drain deadline (issue 29, row 4)."""

import threading
import time

import pytest

from clara.serving.model_thread import Draining, ModelThread


def test_retrieval_runs_between_the_steps_of_a_running_answer():
    """The answer lane's job holds the thread until a retrieval job has run inside it: on one plain worker
    thread (the old shared executor) the retrieval would wait for the answer, and this would time out."""
    thread = ModelThread()
    thread.start()
    retrieved = threading.Event()

    def long_answer():
        from clara.model import generation

        for _ in range(2000):  # what decode() does after each forward
            generation._yield_hook.current[0]()
            if retrieved.is_set():
                return "answered after the retrieval"
            time.sleep(0.005)
        return "answered without it"

    try:
        answer = thread.lane(urgent=False).submit(long_answer)
        time.sleep(0.05)
        retrieval = thread.lane(urgent=True).submit(lambda: retrieved.set() or "hits")
        assert retrieval.result(timeout=10) == "hits"
        assert answer.result(timeout=10) == "answered after the retrieval"
        assert thread.interleaved == 1
    finally:
        thread.close(5)


def test_a_running_answer_stops_at_its_next_step_after_the_deadline():
    thread = ModelThread()
    thread.start()

    def endless():
        from clara.model import generation

        while True:
            generation._yield_hook.current[0]()
            time.sleep(0.01)

    try:
        running = thread.lane(urgent=False).submit(endless)
        time.sleep(0.05)
        thread.stop_at(time.monotonic())
        with pytest.raises(Draining):
            running.result(timeout=5)
    finally:
        assert thread.close(5)  # the thread has ended: a drained answer does not hold up exit
