"""A stage's progress bar over the prompts it generates for, without importing torch (stages restored from
cache import nothing heavy)."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

from tqdm import tqdm

_PROGRESS: ContextVar[dict | None] = ContextVar("visplay_generation_progress", default=None)


@contextmanager
def progress(description: str):
    """One progress bar, named ``description``, over the prompts of every ``generate`` call in the block
    (a stage's bar); it appears with the first call, so a block that generates nothing shows none."""
    state = {"description": description, "bar": None}
    token = _PROGRESS.set(state)
    try:
        yield
    finally:
        _PROGRESS.reset(token)
        if state["bar"] is not None:
            state["bar"].close()


def progress_bar(prompts: int):
    """The bar of the enclosing ``progress`` block (None outside one), its total grown by ``prompts``."""
    state = _PROGRESS.get()
    if state is None:
        return None
    if state["bar"] is None:
        state["bar"] = tqdm(total=0, desc=state["description"], unit="prompt", dynamic_ncols=True)
    state["bar"].total += prompts
    state["bar"].refresh()
    return state["bar"]
