"""The consolidation's output budget, for update-library: a consolidation whose output would not fit the
learner's token cap (``--learner-max-tokens``) is cut there and unparseable, so the proposals are split
into consecutive chunks that fit, each consolidated against E as the chunks before it left it. Pure
functions of the operations and the cap; also E's remaining capacity as the consolidation prompt states
it."""

from __future__ import annotations

import json

from tfgrpo.state.library import Library, Operation, estimate_tokens, library_tokens


def capacity_text(library: Library, max_items: int, max_tokens: int) -> str:
    items, tokens = len(library["items"]), library_tokens(library)
    return (
        f"{items} of {max_items} items used ({max(0, max_items - items)} left); about {tokens} of "
        f"{max_tokens} tokens used ({max(0, max_tokens - tokens)} left, at about 4 characters a token)"
    )


# What one final operation costs the consolidation's output, beyond its JSON as proposed (4 characters a
# token, the estimate E's budget uses; real tokenizers give JSON fewer): a margin for the model's own
# reason and sources, and the list around the operations.
OUTPUT_MARGIN = 1.25
TOKENS_PER_OPERATION = 16
TOKENS_PER_CALL = 64


def operation_tokens(op: Operation) -> int:
    return int(OUTPUT_MARGIN * estimate_tokens(json.dumps(op, ensure_ascii=False))) + TOKENS_PER_OPERATION


def consolidation_chunks(proposed: list[Operation], max_tokens: int) -> list[list[Operation]]:
    """``proposed`` in consecutive chunks whose consolidation fits ``max_tokens`` of output (one chunk
    when all fit, or when there is no cap): a consolidation cut at the learner's token cap is
    unparseable, and would fall back to the raw proposals. An operation too long for any chunk gets
    one of its own."""
    chunks: list[list[Operation]] = []
    used = 0
    for op in proposed:
        cost = operation_tokens(op)
        if chunks and max_tokens > 0 and used + cost > max_tokens:
            chunks.append([])
            used = TOKENS_PER_CALL
        if not chunks:
            chunks.append([])
            used = TOKENS_PER_CALL
        chunks[-1].append(op)
        used += cost
    return chunks
