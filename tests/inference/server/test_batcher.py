"""The batcher's schedule, in process: requests that waited for a worker start the next
batch at once (no batch window: the model does not idle while answers go out), two workers
run two batches at once, batches run back to back and side by side still answer every
request with its own rows and its own error, and a stop answers every request it leaves
(queued or in a worker). No timings are asserted:
a window far longer than any guard shows whether it was waited."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")

from helpers.artifacts import MAX_LENGTH, make_artifact  # noqa: E402
from helpers.data import TEXTS  # noqa: E402

from lastlayer.core.engine import Embeddings  # noqa: E402
from lastlayer.inference import Embedder  # noqa: E402
from lastlayer.inference.server import APIError, Batcher, Metrics, ServeSettings  # noqa: E402

NEVER_MS = 600_000  # a batch window no test would sit out: its guards fail first
GUARD_S = 60  # how long a test waits for an answer before it fails (instead of hanging)


class Held:
    """What the batcher uses of an Embedder, recording each encode call's texts; the first
    call waits in the worker until ``release`` is set (``entered`` says it is there)."""

    def __init__(self, hold: int = 1) -> None:
        self.calls: list[list[str]] = []
        self.hold = hold  # the first ``hold`` calls wait; ``entered``: all of them are in
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    @staticmethod
    def check_request(adapter, n) -> None:
        return None

    @staticmethod
    def resident(names) -> dict:
        return {}

    def encode(self, texts, adapter, batch_size, progress, heads=None) -> Embeddings:
        with self._lock:
            self.calls.append(list(texts))
            count = len(self.calls)
        if count <= self.hold:
            if count == self.hold:
                self.entered.set()
            assert self.release.wait(GUARD_S)
        vectors = np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)
        return Embeddings(vectors, np.array([len(t) for t in texts]))


async def _until(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, GUARD_S), "the worker never got the batch"


def test_requests_that_waited_for_a_batch_start_the_next_one_without_the_window():
    """The first request fills a batch (``max_batch`` texts: no window) and is held in the
    worker; two more (fewer than ``max_batch`` texts) arrive meanwhile. Once it returns,
    they run together at once: had they waited the window (NEVER_MS), they would not be
    answered within the guard."""
    held = Held()
    settings = ServeSettings(batch_window_ms=NEVER_MS, max_batch=3, workers=1)

    async def run():
        batcher = Batcher(held, settings, Metrics())
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(["aa", "bbb", "e"], [None] * 3))
            await _until(held.entered)
            later = [asyncio.ensure_future(batcher.submit([text], ["x"])) for text in ("c", "dd")]
            await asyncio.sleep(0)  # both queued while the first batch runs
            held.release.set()
            return await asyncio.wait_for(asyncio.gather(first, *later), GUARD_S)
        finally:
            held.release.set()
            await batcher.stop()

    (first, c, dd) = asyncio.run(run())
    assert held.calls == [["aa", "bbb", "e"], ["c", "dd"]]  # the two that waited: one batch
    np.testing.assert_array_equal(first[0], [[2, ord("a")], [3, ord("b")], [1, ord("e")]])
    assert first[1] == [2, 3, 1]
    np.testing.assert_array_equal(c[0], [[1, ord("c")]])
    np.testing.assert_array_equal(dd[0], [[2, ord("d")]])


def test_two_workers_run_two_batches_at_once():
    """With 2 workers (the default) a second batch starts while the first is still in the
    worker, is answered first, and the first still gets its own rows once released."""
    held = Held()
    settings = ServeSettings(batch_window_ms=0, max_batch=2)
    assert settings.workers == 2

    async def run():
        batcher = Batcher(held, settings, Metrics())
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(["aa", "b"], None))
            await _until(held.entered)
            second = await asyncio.wait_for(batcher.submit(["ccc"], None), GUARD_S)
            assert not first.done()  # still held: the second batch overtook it
            held.release.set()
            return await asyncio.wait_for(first, GUARD_S), second
        finally:
            held.release.set()
            await batcher.stop()

    first, second = asyncio.run(run())
    assert held.calls == [["aa", "b"], ["ccc"]]
    np.testing.assert_array_equal(first[0], [[2, ord("a")], [1, ord("b")]])
    np.testing.assert_array_equal(second[0], [[3, ord("c")]])


class HeldOnCpu(Held):
    """:class:`Held` on the CPU (so the workers share torch's threads), recording the
    threads each encode call ran on."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def encode(self, texts, adapter, batch_size, progress, heads=None) -> Embeddings:
        self.threads.append(torch.get_num_threads())
        return super().encode(texts, adapter, batch_size, progress, heads)


def test_a_batch_alone_runs_on_every_thread_and_two_share_them():
    """On 2 threads with 2 workers: a batch that starts while no other runs takes both; one
    that starts beside it takes its share (one); the next lone batch both again."""
    held = HeldOnCpu()
    before = torch.get_num_threads()
    torch.set_num_threads(2)

    async def run():
        batcher = Batcher(held, ServeSettings(batch_window_ms=0, max_batch=2), Metrics())
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(["aa", "b"], None))
            await _until(held.entered)
            await asyncio.wait_for(batcher.submit(["ccc"], None), GUARD_S)
            held.release.set()
            await asyncio.wait_for(first, GUARD_S)
            await asyncio.wait_for(batcher.submit(["dd"], None), GUARD_S)
        finally:
            held.release.set()
            await batcher.stop()

    try:
        asyncio.run(run())
        assert held.calls == [["aa", "b"], ["ccc"], ["dd"]]
        assert held.threads == [2, 1, 2]
        assert torch.get_num_threads() == 2  # the stop gave the process its count back
    finally:
        torch.set_num_threads(before)


def test_with_two_workers_a_batch_takes_an_equal_share_of_the_queue():
    """Both workers busy, 8 one-text requests queue. The worker that comes back first takes
    half of them (not all 8, which would leave the other worker idle), the next an equal
    share of what is left, never less than one forward pass (``encode_batch_size`` 2)."""
    held = Held(hold=2)
    settings = ServeSettings(batch_window_ms=0, max_batch=100, encode_batch_size=2)

    async def run():
        batcher = Batcher(held, settings, Metrics())
        batcher.start()
        try:
            busy = [asyncio.ensure_future(batcher.submit(["a"], None))]
            while not held.calls:  # the first worker holds "a"; then the second takes "b"
                await asyncio.sleep(0.01)
            busy.append(asyncio.ensure_future(batcher.submit(["b"], None)))
            await _until(held.entered)  # both workers hold a batch
            texts = [f"q{i}" for i in range(8)]
            queued = [asyncio.ensure_future(batcher.submit([text], None)) for text in texts]
            await asyncio.sleep(0)
            held.release.set()
            return await asyncio.wait_for(asyncio.gather(*busy, *queued), GUARD_S)
        finally:
            held.release.set()
            await batcher.stop()

    answers = asyncio.run(run())
    sizes = [len(call) for call in held.calls]
    assert sorted(held.calls[:2]) == [["a"], ["b"]] and sizes[2:] == [4, 2, 2]
    assert [text for call in held.calls[2:] for text in call] == [f"q{i}" for i in range(8)]
    for answer, text in zip(answers, ["a", "b", *(f"q{i}" for i in range(8))], strict=True):
        np.testing.assert_array_equal(answer[0], [[len(text), ord(text[0])]])


def test_one_worker_takes_everything_queued_up_to_max_batch():
    held = Held()
    batcher = Batcher(held, ServeSettings(max_batch=5, workers=1, encode_batch_size=2),
                      Metrics())
    batcher._queued = 40
    assert batcher._limit() == 5
    batcher.settings = ServeSettings(max_batch=5, workers=2, encode_batch_size=2)
    assert batcher._limit() == 5  # the share (20) is capped by max_batch
    batcher._queued = 3
    assert batcher._limit() == 2  # never below one forward pass


def test_stop_answers_the_running_batch_and_the_queue():
    """A stop while one batch is in the worker and another request waits: both get 503
    (nobody would answer them after the batcher's loop ends)."""
    held = Held()
    settings = ServeSettings(batch_window_ms=NEVER_MS, max_batch=1, workers=1)

    async def run():
        batcher = Batcher(held, settings, Metrics())
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(["a"], None))
        await _until(held.entered)
        queued = asyncio.ensure_future(batcher.submit(["b"], None))
        await asyncio.sleep(0)
        answered = threading.Thread(target=_release_when_done, args=(held, running, queued))
        answered.start()
        await batcher.stop()  # waits for the worker: released once both are answered
        answered.join()
        return await asyncio.gather(running, queued, return_exceptions=True)

    for result in asyncio.run(run()):
        assert isinstance(result, APIError), result
        assert (result.status, result.code) == (503, "shutting_down")


def _release_when_done(held: Held, *futures) -> None:
    """Release the held worker once every future is resolved (or after the guard)."""
    pause = threading.Event()  # never set: a sleep
    for _ in range(GUARD_S * 100):
        if all(f.done() for f in futures):
            break
        pause.wait(0.01)
    held.release.set()


@pytest.fixture(scope="module")
def embedder(saved_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("batcher")
    model = saved_models["bert"]
    embedder = Embedder(model, device="cpu", max_length=MAX_LENGTH)
    embedder.load(make_artifact(model, root / "a", "lora", 2, 1, "bert"), "a")
    embedder.load(make_artifact(model, root / "b", "full", 1, 2, "bert"), "b")
    return embedder


def test_back_to_back_batches_answer_each_request_with_its_own_rows(embedder):
    """Twelve requests over two adapters and the base, at most 4 texts a batch, so they run
    as several batches, each started as the last comes back: every request gets the
    vectors and token counts ``Embedder.encode`` gives it alone (two batches at a time, each
    on its share of torch's threads), and one for an adapter that is not loaded gets its
    404 alone; the stop gives torch's thread count back."""
    threads = torch.get_num_threads()
    names = ["a", "b", None, "a", "missing", "b", None, "a", "b", "a", None, "b"]
    requests = [(TEXTS[i % len(TEXTS): i % len(TEXTS) + 1 + i % 3], name)
                for i, name in enumerate(names)]
    metrics = Metrics()

    async def run():
        batcher = Batcher(embedder, ServeSettings(batch_window_ms=1, max_batch=4), metrics)
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(
                *(batcher.submit(texts, [name] * len(texts)) for texts, name in requests),
                return_exceptions=True), GUARD_S)
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert torch.get_num_threads() == threads
    for (texts, name), result in zip(requests, results, strict=True):
        if name == "missing":
            assert isinstance(result, APIError) and result.status == 404, result
            continue
        vectors, tokens = result
        alone = embedder.encode(texts, adapter=name, progress=False)
        np.testing.assert_allclose(vectors, alone.vectors, atol=1e-5)
        assert tokens == alone.tokens.tolist()
    samples = {s.name: s.value for s in metrics.batch.collect()[0].samples}
    texts = sum(len(t) for t, name in requests if name != "missing")
    assert samples["lastlayer_batch_texts_sum"] == texts
    assert samples["lastlayer_batch_texts_count"] >= texts / 4  # several batches


def test_the_forward_pass_size_follows_the_device_unless_given():
    """16 texts per forward pass on the CPU (as fast as 64 there at a quarter of the working
    memory), 64 on a GPU; a given size always wins."""
    import torch

    from lastlayer.inference.server.batcher import encode_batch_size

    assert encode_batch_size(ServeSettings(), torch.device("cpu")) == 16
    assert encode_batch_size(ServeSettings(), torch.device("cuda", 0)) == 64
    assert encode_batch_size(ServeSettings(), None) == 16  # a stand-in embedder
    assert encode_batch_size(ServeSettings(encode_batch_size=5), torch.device("cuda")) == 5
    assert Batcher(Held(), ServeSettings(), Metrics()).encode_batch_size == 16
    with pytest.raises(ValueError, match="encode_batch_size must be at least 1"):
        ServeSettings(encode_batch_size=0)
