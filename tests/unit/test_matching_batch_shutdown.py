"""A batch of needs that has started is finished even when the worker stops: Faust
acknowledges the batch's records as the loop body is left, however it is left."""

from __future__ import annotations

import asyncio

import pytest

from services.matching.app import _finished


async def test_a_batch_cancelled_half_way_still_runs_to_its_end() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    done: list[str] = []

    async def batch() -> None:
        started.set()
        await release.wait()
        done.append("committed")

    runner = asyncio.create_task(_finished(batch()))
    await started.wait()
    runner.cancel()  # the worker stops while the batch is in its transaction
    await asyncio.sleep(0)
    assert not runner.done()  # still waiting for the batch, not yet acknowledging it
    release.set()

    with pytest.raises(asyncio.CancelledError):
        await runner
    assert done == ["committed"]
