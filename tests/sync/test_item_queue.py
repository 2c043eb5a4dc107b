"""``ItemQueue``: the bounded per-stream queue that trades a backlog for one ``RESYNC``."""

from __future__ import annotations

import pytest

from flags.model import FlagChanged, FlagState
from flags.sync.broadcast import RESYNC, Item, ItemQueue


def _change(version: int) -> FlagChanged:
    return FlagChanged("production", version, "f", FlagState(enabled=True, version=version))


def _take_all(queue: ItemQueue) -> list[Item]:
    return [queue.pop() for _ in range(len(queue))]


class TestItemQueue:
    def test_put__up_to_max_items__all_out_in_order(self) -> None:
        """Within the bound, nothing is dropped and order is kept."""
        queue = ItemQueue(3)
        changes = [_change(v) for v in (1, 2, 3)]

        assert all(queue.put(c) for c in changes)

        assert _take_all(queue) == changes
        assert queue.overflows == 0

    @pytest.mark.parametrize("max_items", [1, 2, 5])
    def test_put__many_more_than_max_items__never_holds_more(self, max_items: int) -> None:
        """However many items are put, at most ``max_items`` are held."""
        queue = ItemQueue(max_items)

        for version in range(1, 10 * max_items):
            queue.put(_change(version))
            assert len(queue) <= max_items

    def test_put__one_past_max_items__items_dropped_for_one_resync(self) -> None:
        """The item that overflows empties the queue and leaves exactly one RESYNC."""
        queue = ItemQueue(2)
        queue.put(_change(1))
        queue.put(_change(2))

        # When: one more, then others before the reader takes the RESYNC.
        assert queue.put(_change(3)) is True
        assert queue.put(_change(4)) is False
        assert queue.put(_change(5)) is False

        # Then: one RESYNC in place of all five, one overflow counted.
        assert _take_all(queue) == [RESYNC]
        assert queue.overflows == 1

    def test_pop__the_resync__items_queued_again_in_order(self) -> None:
        """Once the consumer takes the RESYNC, later items are kept, in order."""
        queue = ItemQueue(1)
        queue.put(_change(1))
        queue.put(_change(2))
        assert queue.pop() is RESYNC

        assert queue.put(_change(3)) is True

        assert _take_all(queue) == [_change(3)]

    def test_put__close_while_behind__queued_after_the_resync(self) -> None:
        """``None`` (closed) is never dropped, even while items are."""
        queue = ItemQueue(1)
        queue.put(_change(1))
        queue.put(_change(2))

        assert queue.put(None) is True

        assert _take_all(queue) == [RESYNC, None]

    def test_put__overflow_with_a_close_queued__the_close_kept(self) -> None:
        """An overflow keeps a queued close instead of a RESYNC."""
        queue = ItemQueue(2)
        queue.put(_change(1))
        queue.put(None)

        queue.put(_change(2))

        assert _take_all(queue) == [None]
        assert queue.overflows == 1
        assert queue.put(_change(3)) is False and len(queue) == 0

    def test_init__max_items_below_one__holds_one(self) -> None:
        """A bound below 1 is taken as 1."""
        queue = ItemQueue(0)

        queue.put(_change(1))

        assert queue.max_items == 1 and _take_all(queue) == [_change(1)]

    def test_pop__empty__raises_index_error(self) -> None:
        """Popping an empty queue raises ``IndexError``."""
        with pytest.raises(IndexError):
            ItemQueue(1).pop()
