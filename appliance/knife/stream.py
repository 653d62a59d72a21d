"""``pushy job start --stream``: each node's live output, line by line, under its name.

The job feed carries ``output`` events (``node``, ``stream``, ``offset``: the stream's bytes
before this chunk, ``data``: text) while the nodes run; a chunk can end mid-line. Each event
becomes the whole lines it completes, each printed as ``NODE: text`` (stdout) or
``NODE [stderr]: text``; a partial line waits, per node and stream, for its newline, the
node's ``run_complete`` or the job's end.

Output events are never replayed and a reader that falls behind misses some; the offsets show
the gap. A gap early in a stream (the first chunks arrive before the feed is open, or the
reader fell behind) is filled from ``GET .../output/NODE/STREAM``; a larger one is reported
by a notice line naming ``pushy job output``. At the end of a job on a few nodes, a stream of
which no event arrived at all is read over REST once (a quick command may have printed
everything before the feed was open).

Colour (the node name, a stable colour from a small palette; the ``[stderr]`` tag red) as
``knife.output.colour_wanted`` says: only on a terminal, never with ``--no-color`` or a
non-empty ``NO_COLOR`` (no-color.org).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

STREAMS = ("stdout", "stderr")
#: node states in which a node has run its command (and may have output)
RAN_STATES = frozenset({"running", "succeeded", "failed", "aborted", "crashed", "timed_out"})
#: end-of-job check of the streams that showed nothing: only for jobs on at most this many
#: nodes ran (two GETs each)
CATCH_UP_NODES = 16
#: a gap is filled from REST only when the stream so far is at most this long (the GET
#: returns all of it) and at most `MAX_FILLS` times a job; otherwise a notice line
FILL_LIMIT = 1 << 20
MAX_FILLS = 32
#: a line longer than this is printed in pieces (a command writing without newlines)
MAX_LINE_CHARS = 64 * 1024

# no red (the [stderr] tag), no black/white (one of them is the background)
PALETTE = (
    "\x1b[36m",  # cyan
    "\x1b[32m",  # green
    "\x1b[33m",  # yellow
    "\x1b[35m",  # magenta
    "\x1b[94m",  # bright blue
    "\x1b[96m",  # bright cyan
    "\x1b[92m",  # bright green
    "\x1b[95m",  # bright magenta
)
STDERR_COLOUR = "\x1b[31m"
RESET = "\x1b[0m"

Key = tuple[str, str]  # (node, stream)
Fetch = Callable[[str, str], "bytes | None"]  # (node, stream) -> the stream so far, or None


# ---------------------------------------------------------------------------------------------
# pure parts


def node_colour(node: str) -> str:
    """The node's colour: the same for a name in every run (crc32, not Python's salted hash)."""
    return PALETTE[zlib.crc32(node.encode("utf-8", "replace")) % len(PALETTE)]


def prefix(node: str, stream: str, *, colour: bool = False) -> str:
    """``NODE:`` for stdout, ``NODE [stderr]:`` for stderr (coloured on request)."""
    if not colour:
        return f"{node}:" if stream == "stdout" else f"{node} [{stream}]:"
    name = f"{node_colour(node)}{node}"
    if stream == "stdout":
        return f"{name}:{RESET}"
    return f"{name}{RESET} {STDERR_COLOUR}[{stream}]:{RESET}"


def format_line(node: str, stream: str, line: str, *, colour: bool = False) -> str:
    """One printed line, newline included (no trailing blank after the prefix of an empty
    line)."""
    head = prefix(node, stream, colour=colour)
    return f"{head} {line}\n" if line else f"{head}\n"


def visible(line: str) -> str:
    """What a terminal would show of a line: a CRLF's CR dropped, and of a line redrawn with
    bare CRs (a progress meter) only the last drawing, so that it cannot overwrite the prefix."""
    return line.rstrip("\r").rpartition("\r")[2]


class LineAssembler:
    """Text chunks in, per key, whole lines out; a partial line waits for the rest of it."""

    def __init__(self, max_line: int = MAX_LINE_CHARS) -> None:
        self.max_line = max(1, max_line)
        self.partial: dict[Key, str] = {}

    def feed(self, key: Key, text: str) -> list[str]:
        buffer = self.partial.pop(key, "") + text
        *lines, rest = buffer.split("\n")
        while len(rest) > self.max_line:
            lines.append(rest[: self.max_line])
            rest = rest[self.max_line :]
        if rest:
            self.partial[key] = rest
        return [visible(line) for line in lines]

    def flush(self, key: Key) -> list[str]:
        """The key's partial line, if any, as a line of its own."""
        rest = self.partial.pop(key, "")
        return [visible(rest)] if rest else []

    def keys(self, node: str | None = None) -> list[Key]:
        return [k for k in self.partial if node is None or k[0] == node]


# ---------------------------------------------------------------------------------------------
# the follower's output sink


class OutputLines:
    """Turns the job feed's events into printed lines (`event`), and at the job's end what is
    left (`finish`); both return the text to print, possibly empty. ``fetch`` reads a stream
    over REST (None when it cannot)."""

    def __init__(
        self,
        job_id: str,
        *,
        colour: bool = False,
        fetch: Fetch | None = None,
        catch_up_nodes: int = CATCH_UP_NODES,
        fill_limit: int = FILL_LIMIT,
        max_fills: int = MAX_FILLS,
    ) -> None:
        self.job_id = job_id
        self.colour = colour
        self.fetch = fetch
        self.catch_up_nodes = catch_up_nodes
        self.fill_limit = fill_limit
        self.max_fills = max_fills
        self.fills = 0
        self.lines = LineAssembler()
        self.seen: dict[Key, int] = {}  # the offset after the last text shown, per stream

    def event(self, name: str, data: Any) -> str:
        if not isinstance(data, dict):
            return ""
        if name == "run_complete" and isinstance(data.get("node"), str):
            return self._flush(data["node"])  # the node is done: its partial lines too
        if name != "output":
            return ""
        node, stream, offset, text = (data.get(k) for k in ("node", "stream", "offset", "data"))
        if not (isinstance(node, str) and stream in STREAMS and isinstance(text, str)):
            return ""
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            return ""
        key = (node, stream)
        out = []
        expected = self.seen.get(key, 0)
        if offset > expected:
            out.append(self._gap(key, expected, offset))
        # the event's text may be longer than its bytes (a truncation marker, replaced invalid
        # UTF-8): the next offset may then be below this, which is no gap
        self.seen[key] = offset + len(text.encode("utf-8", "surrogatepass"))
        out.append(self._text(key, text))
        return "".join(out)

    def finish(self, job: Any) -> str:
        """The job ended: what a small job's silent streams hold, then every partial line."""
        out = [self._catch_up(job)]
        out.extend(self._flush(node) for node in sorted({k[0] for k in self.lines.keys()}))
        return "".join(out)

    # -----------------------------------------------------------------------------------------

    def _line(self, key: Key, line: str) -> str:
        return format_line(key[0], key[1], line, colour=self.colour)

    def _text(self, key: Key, text: str) -> str:
        return "".join(self._line(key, line) for line in self.lines.feed(key, text))

    def _flush(self, node: str) -> str:
        return "".join(
            self._line(key, line) for key in self.lines.keys(node) for line in self.lines.flush(key)
        )

    def _read(self, key: Key) -> bytes | None:
        if self.fetch is None:
            return None
        data = self.fetch(*key)
        return data if isinstance(data, bytes) else None

    def _gap(self, key: Key, expected: int, offset: int) -> str:
        """Bytes ``expected``..``offset`` of the stream never came as events: read them, or
        say that they are not shown."""
        if self.fetch is not None and self.fills < self.max_fills and offset <= self.fill_limit:
            self.fills += 1
            data = self._read(key)
            if data is not None and len(data) >= offset:
                return self._text(key, data[expected:offset].decode("utf-8", "replace"))
        node, stream = key
        channel = "" if stream == "stdout" else f" --channel {stream}"
        notice = (
            f"[pushy: {offset - expected} bytes not shown here; "
            f"pushy job output {self.job_id} {node}{channel} has them]"
        )
        return "".join(self._line(key, line) for line in [*self.lines.flush(key), notice])

    def _catch_up(self, job: Any) -> str:
        nodes = job.get("nodes") if isinstance(job, dict) else None
        if not isinstance(nodes, dict) or self.fetch is None:
            return ""
        ran = sorted(
            {n for state, names in nodes.items() if state in RAN_STATES for n in names or ()}
        )
        if len(ran) > self.catch_up_nodes:
            return ""
        out = []
        for node in ran:
            for stream in STREAMS:
                key = (node, stream)
                if key in self.seen:
                    continue
                data = self._read(key)
                if data:
                    self.seen[key] = len(data)
                    out.append(self._text(key, data.decode("utf-8", "replace")))
        return "".join(out)
