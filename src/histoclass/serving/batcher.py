"""Micro-batching: concurrent requests share one forward pass, run off the event loop on one thread.

Every model call (predictions and heatmaps) runs on that one inference thread: the model is used by one
thread at a time, and the memory it allocates stays in one allocator arena instead of one per server thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from histoclass.inference.predictor import Predictor

__all__ = ["MicroBatcher"]


class MicroBatcher:
    """Collects images for up to ``wait_ms`` (or ``max_batch`` images), predicts them together,
    answers each."""

    def __init__(
        self, predictor: Predictor, tta: bool = False, max_batch: int = 64, wait_ms: float = 5.0
    ) -> None:
        self.predictor, self.tta, self.max_batch, self.wait = (
            predictor,
            tta,
            max_batch,
            wait_ms / 1000,
        )
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False)

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for uint8 NHWC ``pixels`` (already at the model's size)."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((pixels, future))
        return await future

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` on the inference thread (a heatmap, say), off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def _collect(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        items = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait
        while sum(len(p) for p, _ in items) < self.max_batch:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            batch = np.concatenate([pixels for pixels, _ in items])
            try:
                probabilities = await self.call(self.predictor.predict_pixels, batch, self.tta)
            except Exception as error:  # hand the failure to every waiting request, keep serving
                for _, future in items:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for pixels, future in items:
                if not future.done():  # its client may have gone
                    future.set_result(probabilities[start : start + len(pixels)])
                start += len(pixels)
