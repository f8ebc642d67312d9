"""Adaptive micro-batching: concurrent requests share one ONNX Runtime call.

The batcher never waits for company by default: when the runner is free, whatever
requests are queued (up to ``max_batch_size`` rows) go together, so a lone request
runs at once (no added latency at concurrency 1) and requests that arrive while a
batch runs form the next one (throughput under load). ``max_batch_delay_ms`` > 0
additionally waits that long for more rows before running a partial batch.

Where a batch runs is adaptive too. Handing a batch to the ONNX Runtime thread costs
tens of microseconds of thread hand-off and GIL contention, more than a small model's
whole inference (the digits MLP: ~30 us for 64 rows), so batches whose measured run time
is under ``inline_below_s`` run on the event loop itself; slower ones run on the worker
thread, so a big model never blocks the loop. The first batch always goes to the thread
and is timed; a moving average decides after that.

Only requests whose non-batch dimensions agree are concatenated; a request is never
split. Rows are independent in the graphs paritybundle exports (the batch dimension is
the exported dynamic axis), so a request's result depends on its batch-mates only
through float32 noise, which the test suite bounds by the parity tolerance. What can be
checked before batching is (the specs, strings, table indices); should a shared call
still fail, each of its requests runs alone, and only the one the model cannot run on
gets the error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future = field(repr=False)

    def signature(self) -> tuple:
        return tuple((name, a.shape[1:], a.dtype.str) for name, a in self.inputs.items())


class MicroBatcher:
    """Queues validated requests and runs them in shared batches on one worker thread.

    Args:
        run: the synchronous inference function (inputs -> outputs), called off the event loop.
        max_batch_size: rows per ONNX Runtime call at most (1 disables batching).
        max_batch_delay_ms: how long to wait for more rows before running a partial batch.
        on_batch: called with each batch's row count (for metrics).
    """

    def __init__(
        self,
        run: Callable[[Arrays], Arrays],
        max_batch_size: int = 64,
        max_batch_delay_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
        inline_below_s: float = 0.001,
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.max_batch_delay = max(0.0, max_batch_delay_ms) / 1000.0
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._held: _Pending | None = None
        # One thread: ONNX Runtime parallelises inside a call; two calls would fight for the cores.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self._task: asyncio.Task | None = None
        self.inline_below_s = inline_below_s
        self._average_run_s: float | None = None  # moving average of one batch's inference time

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, inputs: Arrays) -> Arrays:
        """Queue one request's inputs and wait for its own outputs."""
        rows = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(inputs, rows, future))
        return await future

    async def _next(self) -> _Pending:
        if self._held is not None:
            held, self._held = self._held, None
            return held
        return await self._queue.get()

    async def _collect(self) -> list[_Pending]:
        first = await self._next()
        batch, rows, signature = [first], first.rows, first.signature()
        deadline = asyncio.get_running_loop().time() + self.max_batch_delay
        while rows < self.max_batch_size:
            try:
                if self._queue.empty() and self.max_batch_delay:
                    timeout = deadline - asyncio.get_running_loop().time()
                    if timeout <= 0:
                        break
                    candidate = await asyncio.wait_for(self._queue.get(), timeout)
                else:
                    candidate = self._queue.get_nowait()
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if candidate.signature() != signature or rows + candidate.rows > self.max_batch_size:
                self._held = candidate  # goes first in the next batch
                break
            batch.append(candidate)
            rows += candidate.rows
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            batch = [p for p in batch if not p.future.cancelled()]  # clients that hung up
            if not batch:
                continue
            if self._on_batch:
                self._on_batch(sum(p.rows for p in batch))
            if len(batch) == 1:
                merged = batch[0].inputs
            else:
                merged = {name: np.concatenate([p.inputs[name] for p in batch], axis=0) for name in batch[0].inputs}
            try:
                outputs = await self._execute(merged)
            except Exception as exc:
                if len(batch) == 1:
                    _deliver(batch[0], exception=exc)
                else:
                    await self._isolate(batch)
                continue
            start = 0
            for pending in batch:
                stop = start + pending.rows
                _deliver(
                    pending, {name: value[start:stop] for name, value in outputs.items()} if len(batch) > 1 else outputs
                )
                start = stop

    async def _execute(self, inputs: Arrays) -> Arrays:
        """One ONNX Runtime call: inline when calls are measured to be short, else on the worker thread."""
        started = time.perf_counter()
        if self._average_run_s is not None and self._average_run_s < self.inline_below_s:
            outputs = self._run(inputs)
        else:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, inputs)
        elapsed = time.perf_counter() - started
        self._average_run_s = elapsed if self._average_run_s is None else 0.9 * self._average_run_s + 0.1 * elapsed
        return outputs

    async def _isolate(self, batch: list[_Pending]) -> None:
        """A shared call failed: run each request alone, so that only the one the model cannot run on
        gets the error, and its batch-mates their answers (as if they had never met it)."""
        for pending in batch:
            if pending.future.done():
                continue
            try:
                _deliver(pending, await self._execute(pending.inputs))
            except Exception as exc:
                _deliver(pending, exception=exc)


def _deliver(pending: _Pending, result: Arrays | None = None, *, exception: BaseException | None = None) -> None:
    if pending.future.done():  # the client hung up meanwhile
        return
    if exception is not None:
        pending.future.set_exception(exception)
    else:
        pending.future.set_result(result)
