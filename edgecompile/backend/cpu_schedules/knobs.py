"""The choices a rule makes from its cost model, open to measurement (`tune --search rules`).

A rule asks ``choose(name, options)`` where its cost model ranked several options (a register
tile, whether to walk K in chunks, how cores split the work): a build gets ``options[0]``, the
model's pick. The cost model is fitted on a few CPUs; on another one its second choice can be
faster -- MobileNet v1's 512 -> 512 @14 walked in K chunks took 0.78-0.94 of the default's time
inside the inference on a 48 KB-L1D Xeon, where a 32 KB-L1D Zen 4 had run it 1.06x slower.
``explore`` runs a rule under every combination of its choices: the variants that tuning times
on the device, each one the rule's own schedule (the same layout, the same epilogue fusion),
kept as a tuning record only where it beats the default there.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# While a rule runs under explore(): the choices fixed so far, and what the rule asked.
_FIXED: contextvars.ContextVar[dict[str, Hashable] | None] = contextvars.ContextVar("fixed", default=None)
_ASKED: contextvars.ContextVar[list[tuple[str, tuple]] | None] = contextvars.ContextVar("asked", default=None)


def choose(name: str, options: Sequence[Hashable]):
    """The option the rule goes with: the first (the cost model's pick) unless explore() or
    fixed() chose another. ``options`` are ranked, the default first; duplicates are dropped."""
    opts = tuple(dict.fromkeys(options))
    asked = _ASKED.get()
    if asked is not None:
        asked.append((name, opts))
    chosen = _FIXED.get()
    if chosen is not None and name in chosen and chosen[name] in opts:
        return chosen[name]
    return opts[0]


@contextlib.contextmanager
def fixed(choices: dict[str, Hashable], asked: list | None = None) -> Iterator[None]:
    """Rules run in this block (in this thread: TVM calls them back in it) go with ``choices``
    where they ask for them; ``asked`` collects (name, options) of every choice made."""
    tokens = (_FIXED.set(choices), _ASKED.set(asked))
    try:
        yield
    finally:
        _FIXED.reset(tokens[0])
        _ASKED.reset(tokens[1])


def explore(run: Callable[[], T], limit: int) -> list[tuple[dict[str, Hashable], T]]:
    """``run()`` under each combination of the choices it makes, depth first, the default
    (every first option) first: [(choices, result)], at most ``limit``. A choice asked only
    under another one (a K-chunk size only where chunking) is branched where it is asked."""
    out: list[tuple[dict[str, Hashable], T]] = []
    stack: list[dict[str, Hashable]] = [{}]
    while stack and len(out) < limit:
        chosen = stack.pop()
        asked: list[tuple[str, tuple]] = []
        with fixed(chosen, asked):
            result = run()
        free = [(n, opts) for n, opts in asked if n not in chosen and len(opts) > 1]
        if not free:
            out.append((chosen, result))
            continue
        name, opts = free[0]
        stack.extend({**chosen, name: o} for o in reversed(opts))
    return out
