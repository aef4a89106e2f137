"""A task's captured log as one stream of bytes: its size, a read from a byte cursor, head and
tail, and a stream of the whole (ORM-level, no views or templates).

The log is stored in chunks (TaskLog rows) while the task runs. Each chunk carries
`end_offset`, the size in bytes (UTF-8) of the log up to its end, so a byte cursor lands in
the first chunk whose end is past it: a read from a cursor is an index range over
(task, end_offset) and costs the new data only, never the whole log, and the size is the
last chunk's end (one index probe). Cursors handed out always fall between characters; a
cursor a client made up that falls inside a multi-byte character starts at the next one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from django.db.models import OuterRef, Subquery

HEAD_BYTES = 64 * 1024
TAIL_BYTES = 256 * 1024
READ_BATCH = 16  # chunks fetched per query while reading or streaming


def byte_size(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def with_offsets(logs: list[tuple[int, str]]) -> list:
    """TaskLog rows (unsaved) for (task id, text) pairs appended in this order, each with its
    end_offset: one query reads the current size of every task's log."""
    from scheduler.models import Task, TaskLog

    ids = {task_id for task_id, _ in logs}
    last = (TaskLog.objects.filter(task_id=OuterRef("pk"), end_offset__isnull=False)
            .order_by("-end_offset").values("end_offset")[:1])
    sizes = dict(Task.objects.filter(pk__in=ids).annotate(size=Subquery(last))
                 .values_list("pk", "size"))
    rows = []
    for task_id, text in logs:
        end = (sizes.get(task_id) or 0) + byte_size(text)
        sizes[task_id] = end
        rows.append(TaskLog(task_id=task_id, text=text, end_offset=end))
    return rows


def repair(task_id: int) -> None:
    """Give end offsets to chunks written without one (rows from before the column): once,
    over the whole log; a no-op (one index probe) otherwise."""
    from scheduler.models import TaskLog

    if not TaskLog.objects.filter(task_id=task_id, end_offset__isnull=True).exists():
        return
    end = 0
    rows = []
    for pk, text in TaskLog.objects.filter(task_id=task_id).order_by("id").values_list(
            "id", "text").iterator(chunk_size=100):
        end += byte_size(text)
        rows.append(TaskLog(pk=pk, end_offset=end))
    TaskLog.objects.bulk_update(rows, ["end_offset"], batch_size=500)


def size(task_id: int) -> int:
    """The log's size in bytes."""
    from scheduler.models import TaskLog

    repair(task_id)
    last = (TaskLog.objects.filter(task_id=task_id, end_offset__isnull=False)
            .order_by("-end_offset").values_list("end_offset", flat=True).first())
    return last or 0


@dataclass
class Piece:
    text: str
    start: int  # the byte cursor the text starts at
    end: int  # the byte cursor after it: where the next read starts


def _batch_after(task_id: int, cursor: int) -> list[tuple[int, str]]:
    from scheduler.models import TaskLog

    return list(TaskLog.objects.filter(task_id=task_id, end_offset__gt=cursor)
                .order_by("end_offset").values_list("end_offset", "text")[:READ_BATCH])


def _chunks_after(task_id: int, cursor: int) -> Iterator[tuple[int, str]]:
    """(end_offset, text) of the chunks ending after `cursor`, in order, fetched in batches."""
    while True:
        batch = _batch_after(task_id, cursor)
        yield from batch
        if len(batch) < READ_BATCH:
            return
        cursor = batch[-1][0]


def read(task_id: int, cursor: int, limit: int) -> Piece:
    """At most `limit` bytes of the log from byte `cursor` (fewer when the log ends first, or
    to end between characters). Costs the bytes read plus the chunks they lie in."""
    parts: list[bytes] = []
    start = cursor
    position = cursor  # the byte cursor of what is read so far
    wanted = limit
    for end, text in _chunks_after(task_id, cursor):
        data = text.encode("utf-8", "replace")
        chunk_start = end - len(data)
        skip = max(0, position - chunk_start)
        if not parts and position == start:
            # A cursor inside a character starts at the next character.
            while skip < len(data) and (data[skip] & 0xC0) == 0x80:
                skip += 1
            start = position = chunk_start + skip
        take = data[skip: skip + wanted]
        if len(take) == wanted and skip + wanted < len(data):
            # Stop between characters: never split one across two reads.
            cut = len(take)
            while cut > 0 and (data[skip + cut] & 0xC0) == 0x80:
                cut -= 1
            take = take[:cut]
            parts.append(take)
            position += len(take)
            break
        parts.append(take)
        position += len(take)
        wanted -= len(take)
        if wanted <= 0:
            break
    return Piece(text=b"".join(parts).decode("utf-8", "replace"), start=start, end=position)


@dataclass
class HeadTail:
    head: str
    tail: str
    hidden: int  # bytes between head and tail, not shown (0: the whole log is in head)
    size: int  # bytes of the whole log when read: the cursor to follow it from


def head_and_tail(task_id: int, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> HeadTail:
    """The whole log when it is small, else its first `head` and last `tail` bytes."""
    total = size(task_id)
    if total <= head + tail:
        return HeadTail(head=read(task_id, 0, total).text, tail="", hidden=0, size=total)
    first = read(task_id, 0, head)
    last = read(task_id, total - tail, tail)
    return HeadTail(head=first.text, tail=last.text, hidden=last.start - first.end, size=total)


def stream(task_id: int) -> Iterator[bytes]:
    """The whole log as UTF-8 bytes, a few chunks in memory at a time."""
    repair(task_id)
    for _end, text in _chunks_after(task_id, -1):
        yield text.encode("utf-8", "replace")


async def astream(task_id: int) -> AsyncIterator[bytes]:
    """`stream` for an ASGI server: Django reads a synchronous iterator whole into memory
    before it sends a byte under ASGI, so there each batch is fetched in the sync thread."""
    from asgiref.sync import sync_to_async

    await sync_to_async(repair)(task_id)
    cursor = -1
    while True:
        batch = await sync_to_async(_batch_after)(task_id, cursor)
        for _end, text in batch:
            yield text.encode("utf-8", "replace")
        if len(batch) < READ_BATCH:
            return
        cursor = batch[-1][0]
