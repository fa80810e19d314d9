import asyncio

import numpy as np
import pytest

from finsent.inference.api.batching import Batcher, Overloaded
from finsent.inference.predictors import FP32_FILE, OnnxPredictor

REQUESTS = [
    ["$AAPL beats estimates"],
    ["Fed holds rates", "$TSLA deliveries miss"],
    ["oil slides", "calm", "up"],
]


@pytest.fixture(scope="module")
def fp32(exported_project) -> OnnxPredictor:
    """The fp32 model: a text's probabilities do not depend on the other texts of its batch."""
    return OnnxPredictor(exported_project / "exported" / FP32_FILE, 32)


def uniform(texts: list[str]) -> np.ndarray:
    """A model that fails on the text "bad", as ONNX Runtime raises on an input it cannot take."""
    if "bad" in texts:
        raise RuntimeError("model run failed")
    return np.full((len(texts), 3), 1 / 3, dtype=np.float32)


def serve(batcher: Batcher, requests: list[list[str]]) -> list:
    """Send `requests` at once; answers (or the exception raised) in their order."""

    async def run() -> list:
        batcher.start()
        answers = await asyncio.gather(
            *(batcher.predict(texts) for texts in requests), return_exceptions=True
        )
        await batcher.stop()
        return answers

    return asyncio.run(run())


def test_requests_in_one_window_share_one_run_and_each_gets_its_own_rows(fp32):
    runs = []
    batcher = Batcher(fp32.predict_proba, window_s=0.5, max_batch=32, max_queued=64, on_batch=runs.append)
    answers = serve(batcher, REQUESTS)
    assert runs == [6]
    for texts, answer in zip(REQUESTS, answers, strict=True):
        np.testing.assert_allclose(answer, fp32.predict_proba(texts), atol=1e-5)


def test_a_run_takes_whole_requests_up_to_max_batch_and_a_larger_one_alone(fp32):
    runs = []
    batcher = Batcher(fp32.predict_proba, window_s=0.5, max_batch=3, max_queued=64, on_batch=runs.append)
    answers = serve(batcher, [*REQUESTS, ["a", "b", "c", "d"], ["e"]])
    assert runs == [3, 3, 4, 1]  # [1 + 2], [3], [4] over max_batch alone, [1]
    assert [len(answer) for answer in answers] == [1, 2, 3, 4, 1]


def test_texts_over_the_queue_are_refused_not_queued(fp32):
    runs = []
    batcher = Batcher(fp32.predict_proba, window_s=0.5, max_batch=32, max_queued=4, on_batch=runs.append)
    answers = serve(batcher, REQUESTS)  # 1 + 2 wait; 3 more would make 6
    assert [type(answer) for answer in answers[:2]] == [np.ndarray, np.ndarray]
    assert isinstance(answers[2], Overloaded)
    assert runs == [3]


def test_stop_answers_the_waiting_requests_then_refuses_new_ones(fp32):
    async def run():
        batcher = Batcher(fp32.predict_proba, window_s=10, max_batch=32, max_queued=64)
        batcher.start()
        waiting = asyncio.create_task(batcher.predict(["waits for the window"]))
        await asyncio.sleep(0.1)
        await batcher.stop()  # does not wait out the 10 s window
        with pytest.raises(Overloaded):
            await batcher.predict(["too late"])
        return await waiting

    assert asyncio.run(asyncio.wait_for(run(), 5)).shape == (1, 3)


def test_a_failed_run_fails_its_requests_only():
    async def run():
        batcher = Batcher(uniform, window_s=0, max_batch=32, max_queued=64)
        batcher.start()
        with pytest.raises(RuntimeError, match="model run failed"):
            await batcher.predict(["bad"])
        answer = await batcher.predict(["good"])
        await batcher.stop()
        return answer

    assert asyncio.run(run()).shape == (1, 3)


def test_a_failed_run_of_several_requests_runs_each_alone_so_that_only_the_bad_one_fails():
    runs = []
    batcher = Batcher(uniform, window_s=0.5, max_batch=32, max_queued=64, on_batch=runs.append)
    answers = serve(batcher, [["good"], ["bad"], ["fine", "too"]])
    assert runs == [4, 1, 1, 2]  # together, then each alone
    assert [answers[0].shape, answers[2].shape] == [(1, 3), (2, 3)]
    assert isinstance(answers[1], RuntimeError)


def test_a_request_cancelled_while_waiting_is_not_run():
    runs = []

    async def run():
        batcher = Batcher(uniform, window_s=0.2, max_batch=32, max_queued=64, on_batch=runs.append)
        batcher.start()
        cancelled = asyncio.create_task(batcher.predict(["gone", "away"]))
        kept = asyncio.create_task(batcher.predict(["kept"]))
        await asyncio.sleep(0.05)
        cancelled.cancel()  # as uvicorn cancels the requests left when its shutdown times out
        answer = await kept
        await batcher.stop()
        return answer

    assert asyncio.run(asyncio.wait_for(run(), 5)).shape == (1, 3)
    assert runs == [1]
