"""Micro-batching: concurrent requests share one forward pass, run off the event loop on one thread."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from histoclass.inference.predictor import Predictor

__all__ = ["MicroBatcher"]


class MicroBatcher:
    """Collects images for up to ``wait_ms`` (or ``max_batch`` images), predicts them together, answers each."""

    def __init__(self, predictor: Predictor, max_batch: int = 64, wait_ms: float = 5.0) -> None:
        self.predictor, self.max_batch, self.wait = predictor, max_batch, wait_ms / 1000
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
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            batch = np.concatenate([pixels for pixels, _ in items])
            try:
                probabilities = await loop.run_in_executor(self.executor, self.predictor.predict_pixels, batch)
            except Exception as error:  # hand the failure to every waiting request, keep serving
                for _, future in items:
                    future.set_exception(error)
                continue
            start = 0
            for pixels, future in items:
                future.set_result(probabilities[start : start + len(pixels)])
                start += len(pixels)
