"""A generated task: two-number addition, "12+34=" -> "46" (exact match is the metric)."""

from __future__ import annotations

import random

from peftlab.study.data.examples import PromptCompletion


def additions(count: int = 6000, digits: int = 2, seed: int = 1234) -> list[PromptCompletion]:
    """`count` distinct problems a+b with operands of up to `digits` digits, generated from `seed`."""
    high = 10**digits - 1
    space = (high + 1) ** 2
    count = min(count, space)
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    while len(seen) < count:
        seen.add((rng.randint(0, high), rng.randint(0, high)))
    return [PromptCompletion(f"{a}+{b}=", str(a + b)) for a, b in sorted(seen, key=lambda p: rng.random())]
