"""Seed lists as StyleGAN and EDM users type them: `0-49999`, `0,5,10-20`.

    parse_seeds("0,5,10-12")   # [0, 5, 10, 11, 12]

Ranges are inclusive at both ends, as in upstream's `gen_images.py` and `generate.py`; items
keep the order they were written in, repeats included. A seed is what
`np.random.RandomState(seed)` accepts: 0 .. 2**32 - 1.
"""

import re

import click

__all__ = ["parse_seeds", "format_seeds", "SeedList", "MAX_SEED", "MAX_COUNT"]

MAX_SEED = 2 ** 32 - 1
# A longer list is almost certainly a typo (0-4294967295) that would exhaust memory.
MAX_COUNT = 10_000_000

_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")
_EXAMPLE = "write seeds like 0-49999 or 0,5,10-20"


def parse_seeds(text, max_count=MAX_COUNT):
    """'0,5,10-20' -> [0, 5, 10, 11, ..., 20]; ValueError with a one-line reason otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise ValueError(f"seeds must be text such as '0-49999', got {type(text).__name__}")
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise ValueError(f"empty seed list or empty item in {text!r}; {_EXAMPLE}")
    seeds = []
    for item in items:
        m = _ITEM.match(item)
        if m is None:
            if item.startswith("-") or re.match(r"^\d+--\d+$", item):
                raise ValueError(f"seed {item!r} is negative; seeds are 0 .. {MAX_SEED}")
            raise ValueError(f"{item!r} is not a seed or a range; {_EXAMPLE}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi > MAX_SEED or lo > MAX_SEED:
            raise ValueError(f"seed {max(lo, hi)} in {item!r} is too large; seeds are 0 .. {MAX_SEED}")
        if hi < lo:
            raise ValueError(f"range {item!r} runs backwards; write it as {hi}-{lo}")
        if len(seeds) + (hi - lo + 1) > max_count:
            raise ValueError(f"{text!r} names more than {max_count:,} seeds; give a shorter range")
        seeds.extend(range(lo, hi + 1))
    return seeds


def format_seeds(seeds):
    """The shortest text parse_seeds turns back into `seeds` ([0, 1, 2, 5] -> '0-2,5')."""
    parts, i, seeds = [], 0, [int(s) for s in seeds]
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if j == i else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


class SeedList(click.ParamType):
    """click option type: '0-63' or '0,5,10-20' -> list of ints (see parse_seeds)."""

    name = "seeds"

    def __init__(self, max_count=MAX_COUNT):
        self.max_count = max_count

    def get_metavar(self, param, ctx=None):  # `ctx` is passed from click 8.2 on
        return "LIST"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            return list(value)
        try:
            return parse_seeds(value, max_count=self.max_count)
        except ValueError as err:
            self.fail(str(err), param, ctx)
