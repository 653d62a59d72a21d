"""``pushy job …``: knife-push's ``knife job start/list/status/output`` with the same request
bodies, messages and exit codes (client-knife.md §B), plus ``abort`` and ``watch``.

Deliberate differences from knife-push (each named in the command's --help):
- ``start``: a 400 from the POST is reported (``ERROR: <server message>``, exit 100) instead
  of knife's silent retry as a Push Jobs 1.0 request, which drops env/file/dir/user; the job is
  followed through the server's event feed (``--poll`` gives knife's polling and output); a
  ``--with-env`` that is not a JSON object is an error (knife drops it with an info log);
  ``--file`` is sent as ``base64:`` when it is not UTF-8 text (knife sends ``raw:`` bytes that
  JSON cannot carry); ``--search`` reads every page of results (knife only the first);
  ``N%`` quorums are rounded up exactly (knife's float arithmetic turns 7% of 100 into 8);
  with ``-F json`` stdout holds the job's JSON alone ("Started." and progress on stderr);
  ``--stream`` (not in knife) prints the nodes' output as it arrives (``knife.stream``).
- ``output``: the captured bytes are written as they are, without knife's extra newline.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.knife import output
from appliance.knife.credentials import connect
from appliance.knife.follow import EventStream, Follower, exit_code
from appliance.knife.nodes import EXIT_UNKNOWN_NODE, missing_clients, search_node_names
from appliance.knife.output import colour_wanted
from appliance.knife.session import Api, ApiError, CliError, error_text
from appliance.knife.stream import OutputLines
from appliance.sse import SseEvent

QUORUM_RE = re.compile(r"([0-9]+)(%?)")
MSG_QUORUM = "Invalid Format please enter integer or percent"
SHARE_RE = re.compile(r"[0-9]+%?")
MSG_CHANNEL = "Invalid Format please enter stdout or stderr"
MSG_NO_JOB = "No job specified."
MSG_NO_NODES = (
    "No nodes to run job on. Specify nodes as arguments or use -s to specify a search query."
)
EXIT_FAILED = 1  # knife: the job did not succeed, or a missing argument / file
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


# ---------------------------------------------------------------------------------------------
# pure parts of ``job start``


def parse_quorum(text: str, node_count: int) -> int:
    """knife's ``-q``: ``N`` → N, ``N%`` → N% of the nodes rounded up; anything else is
    knife's error (exit 100)."""
    match = QUORUM_RE.fullmatch(text)
    if match is None:
        raise CliError(MSG_QUORUM)
    number = int(match.group(1))
    return math.ceil(number * node_count / 100) if match.group(2) else number


def parse_share(text: str, option: str) -> int | str:
    """``--max-concurrency`` / ``--max-errors``: ``N`` (sent as a number) or ``N%`` (sent as
    given: the server takes that share of the job's nodes, rounded up, and checks the range)."""
    if SHARE_RE.fullmatch(text) is None:
        raise CliError(f"{option} takes a count (e.g. 10) or a percentage (e.g. 25%), not {text!r}")
    return text if text.endswith("%") else int(text)


def file_field(data: bytes) -> str:
    """The body's ``file``: ``raw:`` + the text when it is UTF-8, else ``base64:`` + base64."""
    try:
        return "raw:" + data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode("ascii")


def parse_env(text: str) -> dict[str, Any]:
    """``--with-env``: a JSON object, or an error (exit 1) that says what is wrong."""
    try:
        env = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--with-env is not valid JSON ({exc}): {text!r}", EXIT_FAILED) from None
    if not isinstance(env, dict):
        kind = type(env).__name__.replace("dict", "object").replace("list", "array")
        raise CliError(
            f'--with-env must be a JSON object like \'{{"NAME": "value"}}\', not a {kind}',
            EXIT_FAILED,
        )
    return env


def job_body(
    command: str,
    nodes: list[str],
    quorum: int,
    *,
    file: str | None = None,
    capture: bool = False,
    env: dict[str, Any] | None = None,
    directory: str | None = None,
    user: str | None = None,
    run_timeout: int | None = None,
    max_concurrency: int | str | None = None,
    max_errors: int | str | None = None,
) -> dict[str, Any]:
    """knife's v2 body, keys in its order: command, nodes, quorum, then file, capture_output
    (always), env, dir, user, run_timeout (each only when given); then ours, the rolling
    limits (only when given)."""
    body: dict[str, Any] = {"command": command, "nodes": list(nodes), "quorum": quorum}
    if file is not None:
        body["file"] = file
    body["capture_output"] = bool(capture)
    if env is not None:
        body["env"] = env
    if directory is not None:
        body["dir"] = directory
    if user is not None:
        body["user"] = user
    if run_timeout is not None:
        body["run_timeout"] = run_timeout
    if max_concurrency is not None:
        body["max_concurrency"] = max_concurrency
    if max_errors is not None:
        body["max_errors"] = max_errors
    return body


def shown(job: Any, fmt: str) -> Any:
    """The job as the text formats print it: ``node_details`` only for the nodes that did not
    simply exit 0, without the fields they left null (the server's JSON has them all; -F json
    prints that). A job whose nodes all exited 0 prints exactly as knife prints it."""
    if fmt == "json" or not isinstance(job, dict) or not isinstance(job.get("node_details"), dict):
        return job
    quiet = {"exit_status": 0, "signal": None, "reason": None}
    notable = {
        n: {k: v for k, v in d.items() if v is not None}
        for n, d in job["node_details"].items()
        if isinstance(d, dict) and d != quiet
    }
    out = {k: v for k, v in job.items() if k != "node_details"}
    if notable:
        out["node_details"] = notable
    return out


def read_job_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CliError(f"{path} not found", EXIT_FAILED) from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_FAILED) from None


def job_id_of(created: Any) -> str:
    """knife takes the last 32 characters of the ``uri``."""
    if isinstance(created, dict) and isinstance(created.get("uri"), str):
        return created["uri"][-32:]
    if isinstance(created, dict) and isinstance(created.get("id"), str):
        return created["id"]
    raise CliError(f"unexpected answer to the job request: {str(created)[:200]!r}")


def watch_line(event: SseEvent, fmt: str) -> str:
    """One event of ``job watch``: ``event  id  data`` or, with ``-F json``, a JSON object."""
    if fmt == "json":
        return json.dumps({"event": event.event, "id": event.id, "data": event.json()})
    return f"{event.event}  {event.id or '-'}  {event.data}"


# ---------------------------------------------------------------------------------------------
# commands


def _job_path(api: Api, job_id: str, *rest: str) -> str:
    parts = [urllib.parse.quote(p, safe="") for p in (job_id, *rest)]
    return api.org_path("pushy/jobs/" + "/".join(parts))


def run_start(args: argparse.Namespace) -> int:
    if not args.job_command_name:
        print(f"ERROR: {MSG_NO_JOB}", file=sys.stderr)
        print("USAGE: " + args.usage.removeprefix("usage: "), end="")
        return EXIT_FAILED
    if args.stream and (args.poll or args.nowait):
        other = "--poll" if args.poll else "-b/--nowait"
        raise CliError(f"--stream reads the job's event feed while following it: not with {other}")
    api = connect(args)
    if args.search:
        nodes = search_node_names(api, args.search)
    else:
        nodes = list(args.nodes)
    if not nodes:
        raise CliError(MSG_NO_NODES, EXIT_FAILED)
    quorum = parse_quorum(args.quorum, len(nodes))
    if not args.search and not getattr(args, "allow_unknown_nodes", False):
        refuse_unknown(api, nodes)
    file = file_field(read_job_file(args.file)) if args.file is not None else None
    env = parse_env(args.with_env) if args.with_env is not None else None
    limits = {
        name: parse_share(getattr(args, name), "--" + name.replace("_", "-"))
        for name in ("max_concurrency", "max_errors")
        if getattr(args, name) is not None
    }
    body = job_body(
        args.job_command_name,
        nodes,
        quorum,
        file=file,
        capture=args.capture or args.stream,
        env=env,
        directory=args.in_dir,
        user=args.as_user,
        run_timeout=args.timeout,
        **limits,
    )
    path = api.org_path("pushy/jobs")
    reply = api.request("POST", path, body)
    if reply.status == 400:  # no v1 fallback: it would drop env/file/dir/user without a word
        raise CliError(error_text(reply.body()))
    if not 200 <= reply.status < 300:
        raise ApiError(reply.status, reply.body(), "POST", path)
    job_id = job_id_of(reply.body())
    # -F json: only the job's JSON on stdout, for a script to parse; the rest on stderr
    chatter = sys.stderr if args.format == "json" else sys.stdout
    print(f"Started.  Job ID: {job_id}", file=chatter, flush=True)
    if args.nowait:
        return 0
    sink = None
    if args.stream:  # the output lines go where the progress goes, between its lines
        sink = OutputLines(job_id, colour=colour_wanted(chatter), fetch=_output_reader(api, job_id))
    follower = Follower(
        api,
        job_id,
        out=chatter,
        poll_interval=args.poll_interval,
        poll=args.poll,
        tty=chatter.isatty(),
        output=sink,
    )
    try:
        job = follower.run()
    except KeyboardInterrupt:
        if chatter.isatty():
            print(file=chatter, flush=True)  # end the progress line
        print(interrupted_text(job_id), file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    output.emit(shown(job, args.format), args.format, sys.stdout)
    return exit_code(job, strict=args.exit_strict)


def refuse_unknown(api: Api, nodes: list[str]) -> None:
    """Named nodes the organization does not have: no job (the server would start it and
    count them unavailable, failing a 100% quorum a voting timeout later)."""
    unknown = missing_clients(api, list(dict.fromkeys(nodes)))
    if not unknown:
        return
    names = ", ".join(f"'{n}'" for n in unknown)
    what = "no node named" if len(unknown) == 1 else "no nodes named"
    raise CliError(
        f"{what} {names} in organization '{api.org}' (no client of that name); no job "
        "started (--allow-unknown-nodes starts it anyway: the server counts such a node "
        "unavailable)",
        EXIT_UNKNOWN_NODE,
    )


def interrupted_text(job_id: str) -> str:
    """Ctrl-C stops following, not the job: say so, and how to get back to it."""
    return (
        f"pushy job start: interrupted; job {job_id} goes on on the server.\n"
        f"  follow it: pushy job status {job_id}  (events: pushy job watch {job_id})\n"
        f"  abort it:  pushy job abort {job_id}"
    )


def _output_reader(api: Api, job_id: str) -> Callable[[str, str], bytes | None]:
    """``--stream``'s REST read of a node's stream so far (None when there is none or the
    server does not answer: the lines are only missing, the job goes on being followed)."""

    def read(node: str, channel: str) -> bytes | None:
        try:
            data = api.get(
                _job_path(api, job_id, "output", node, channel), accept="application/octet-stream"
            )
        except CliError:
            return None
        return data if isinstance(data, bytes) else None

    return read


def run_list(args: argparse.Namespace) -> int:
    api = connect(args)
    jobs = api.get(api.org_path("pushy/jobs"))
    if not isinstance(jobs, list):
        jobs = []
    if args.status:
        jobs = [j for j in jobs if isinstance(j, dict) and j.get("status") == args.status]
    if args.limit is not None:
        jobs = jobs[: args.limit]
    output.emit(jobs, args.format, sys.stdout)
    return 0


def run_status(args: argparse.Namespace) -> int:
    api = connect(args)
    path = _job_path(api, args.job_id) if args.job_id else api.org_path("pushy/jobs/")
    output.emit(shown(api.get(path), args.format), args.format, sys.stdout)
    return 0


def run_output(args: argparse.Namespace) -> int:
    if args.channel not in ("stdout", "stderr"):
        raise CliError(MSG_CHANNEL)
    api = connect(args)
    if not args.nodes:
        return _every_output(api, args.job_id, args.channel)
    path = _job_path(api, args.job_id, "output", args.nodes[0], args.channel)
    data = api.get(path, accept="application/octet-stream")
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def _every_output(api: Api, job_id: str, channel: str) -> int:
    """No NODE (beyond knife): each node's captured output in turn, under a ``== NODE ==``
    line, in name order; the nodes that captured nothing are left out."""
    job = api.get(_job_path(api, job_id))
    names = sorted(n for group in job.get("nodes", {}).values() for n in group)
    shown = 0
    for name in names:
        try:
            data = api.get(
                _job_path(api, job_id, "output", name, channel), accept="application/octet-stream"
            )
        except ApiError as exc:
            if exc.status == 404:  # no output from this node (yet)
                continue
            raise
        out = sys.stdout.buffer
        sys.stdout.flush()
        out.write(f"== {name} ({channel}) ==\n".encode())
        out.write(data if not data or data.endswith(b"\n") else data + b"\n")
        out.flush()
        shown += 1
    if not shown:
        raise CliError(f"no node of job {job_id} has captured {channel} (started with --capture?)")
    return 0


def run_abort(args: argparse.Namespace) -> int:
    api = connect(args)
    path = _job_path(api, args.job_id, "abort")
    reply = api.request("POST", path, {})
    if reply.status == 409:
        raise CliError(error_text(reply.body()), EXIT_FAILED)
    if not 200 <= reply.status < 300:
        raise ApiError(reply.status, reply.body(), "POST", path)
    output.emit(shown(reply.body(), args.format), args.format, sys.stdout)
    return 0


def run_watch(args: argparse.Namespace) -> int:
    api = connect(args)
    if args.job_id:
        quoted = urllib.parse.quote(args.job_id, safe="")
        stream = EventStream(api, api.org_path(f"pushy/jobs_status_feed/{quoted}"))
    else:
        stream = EventStream(api, api.org_path("pushy/jobs_status_feed"), stop_on=())
    stream.start()
    try:
        for _ in range(1_000_000_000):  # the org feed runs until Ctrl-C
            item = stream.get(0.5)
            if item is None:
                continue
            kind, payload = item
            if kind == "event":
                print(watch_line(payload, args.format), flush=True)
            elif kind == "unavailable":
                raise payload
            elif kind == "ended":
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stream.close()
    return 0


# ---------------------------------------------------------------------------------------------
# parsers


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return value


START_DESCRIPTION = """\
Start COMMAND (a whitelisted job name) on the NODEs or on the nodes a --search finds, then
follow it to the end and print the job. Prints "Started.  Job ID: <id>" first. With -F json
stdout holds the job's JSON alone (a script can parse it); "Started." and the progress go to
stderr.

Following: through the server's job event feed (resumed after a dropped connection, polling
if there is no feed). On a terminal a live progress line shows the node counts per state, the
elapsed time and the nodes still outstanding, and ends as a summary line; otherwise knife's
status lines (Voting., Running (X/Y in progress) ..., Complete.) are printed when they change.
--poll polls the job every --poll-interval seconds exactly as knife does, with its output.

--stream (not in knife-push; implies --capture) prints the nodes' output while they run, one
line per output line: "NODE: text" for stdout, "NODE [stderr]: text" for stderr, in order for
each node (the lines of different nodes interleave as they arrive). A line is printed once its
newline arrives (an unfinished one when its node or the job ends). The lines go where the
progress goes: stdout, or stderr with -F json. On a terminal the node name is coloured (a
colour per node, [stderr] red); never with --no-color or NO_COLOR set. Live output is not
replayed and a reader that falls behind can miss lines: a gap the byte offsets show is read
back over REST or reported by a notice line; pushy job output ID prints everything. Not with
--poll or --nowait.

Exit status (knife's): 0 when the job is complete and every node succeeded, nacked or was
unavailable (with --exit-strict: only when every node succeeded), 1 otherwise or when the
command, the nodes or the --file are missing or --with-env is not a JSON object, 100 on a bad
--quorum or a server/network error. --nowait exits 0 once the job is started. Ctrl-C while
following exits 130 and leaves the job running on the server (stderr says how to follow or
abort it: pushy job status ID, pushy job abort ID).

Named NODEs the organization has no client for (typos): nothing is started, exit 1 (knife
starts the job, which fails its quorum with those nodes unavailable); --allow-unknown-nodes
starts it anyway. Nodes from --search are not checked (they exist).

Differences from knife-push: a 400 from the server is reported as "ERROR: <its message>"
(exit 100) instead of retrying as a Push Jobs 1.0 request that would silently drop --with-env,
--file, --in-dir and --as-user; --search reads every page of search results (knife uses only
the first page); --file is sent base64-encoded when it is not UTF-8 text.
"""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    job = sub.add_parser(
        "job",
        help="start, follow and inspect push jobs (knife job ...)",
        description="Start, follow and inspect push jobs, as knife-push's knife job does.",
    )
    job.set_defaults(operator=True)
    jsub = job.add_subparsers(dest="job_command", metavar="SUBCOMMAND")

    start = jsub.add_parser(
        "start",
        parents=[common],
        help="start a job and follow it (knife job start)",
        description=START_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument(
        "job_command_name", nargs="?", metavar="COMMAND", help="the whitelisted command to run"
    )
    start.add_argument("nodes", nargs="*", metavar="NODE", help="nodes to run it on")
    start.add_argument(
        "--timeout",
        type=_non_negative_int,
        metavar="TIMEOUT",
        help="Maximum time the job will be allowed to run (in seconds). "
        "Default: the server's (3600).",
    )
    start.add_argument(
        "-q",
        "--quorum",
        default="100%",
        metavar="QUORUM",
        help="Pushy job quorum. Percentage (-q 50%%) or Count (-q 145). A percentage is "
        "rounded up over the number of nodes. Default 100%%.",
    )
    start.add_argument(
        "-s",
        "--search",
        metavar="QUERY",
        help="Solr query for list of job candidates (every page of results is used).",
    )
    start.add_argument(
        "--file",
        metavar="FILE",
        help="Send the file to the client (path in CHEF_PUSH_JOB_FILE on the node); sent as "
        "raw: text when it is UTF-8, else base64:.",
    )
    start.add_argument(
        "--capture", action="store_true", help="Capture stdout and stderr for this job."
    )
    start.add_argument(
        "--stream",
        action="store_true",
        help="Print each node's output while the job runs (implies --capture; not in "
        "knife-push), one line per output line: 'NODE: text', stderr as 'NODE [stderr]: "
        "text'; on stderr with -F json. Node names coloured on a terminal unless --no-color "
        "or NO_COLOR is set.",
    )
    start.add_argument(
        "--with-env",
        metavar="ENVIRONMENT",
        help='Accept the environment for this job as a JSON object, e.g. \'{"test": "foo"}\'.',
    )
    start.add_argument(
        "--max-concurrency",
        metavar="N|N%",
        help="Rolling execution (not in knife-push): at most N of the nodes (or N%% of them, "
        "rounded up) run at once; when one finishes the next committed node starts. Each "
        "node's own run is bounded by --timeout. Default: all at once.",
    )
    start.add_argument(
        "--max-errors",
        metavar="N|N%",
        help="Once more than N nodes (or N%% of them) ended failed, crashed or timed out, no "
        "further node starts: the job ends aborted (stopped_by: max_errors) once the running "
        "ones finish. Default: no limit.",
    )
    start.add_argument(
        "--allow-unknown-nodes",
        action="store_true",
        help="start the job even when a named NODE has no client in the organization (the "
        "server counts it unavailable; by default nothing is started and the exit status is 1)",
    )
    start.add_argument("--as-user", metavar="USER", help="Run the job as the indicated user.")
    start.add_argument("--in-dir", metavar="DIR", help="Run the job in the indicated directory.")
    start.add_argument(
        "-b",
        "--nowait",
        action="store_true",
        help="Rather than waiting for each job to complete, exit immediately after starting "
        "the job (exit 0).",
    )
    start.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=1.0,
        metavar="RATE",
        help="Repeat interval for job status update (in seconds); used by --poll and when the "
        "server has no event feed. Default 1.0.",
    )
    start.add_argument(
        "--poll",
        action="store_true",
        help="poll the job like knife (a '.' before each poll, status lines) instead of "
        "following its event feed",
    )
    start.add_argument(
        "--exit-strict",
        action="store_true",
        help="exit 1 unless the job is complete and every node succeeded (knife also counts "
        "nacked and unavailable nodes as success)",
    )
    start.set_defaults(func=run_start, usage=start.format_usage())

    lst = jsub.add_parser(
        "list",
        parents=[common],
        help="list jobs, newest first (knife job list)",
        description="List the organization's jobs (without their nodes), newest first.",
    )
    lst.add_argument("--status", help="only jobs with this status (e.g. running, complete)")
    lst.add_argument(
        "--limit", type=_non_negative_int, metavar="N", help="at most N jobs (the newest)"
    )
    lst.set_defaults(func=run_list)

    status = jsub.add_parser(
        "status",
        parents=[common],
        help="show a job (knife job status)",
        description="Print the job with its nodes by status. Without an ID, GET pushy/jobs/ as "
        "knife does (the job list). An unknown job is the server's 404: exit 100.",
    )
    status.add_argument("job_id", nargs="?", metavar="ID", help="the job id")
    status.set_defaults(func=run_status)

    out = jsub.add_parser(
        "output",
        parents=[common],
        help="print a node's captured output (knife job output)",
        description="Write the output a node captured for the job (started with --capture) to "
        "stdout, byte for byte. Only the first NODE is used, as in knife. Unlike knife, no "
        "newline is added after the output. No capture or an unknown node: exit 100. Without "
        "NODE (not in knife): every node's output in turn, each under a '== NODE (stdout) ==' "
        "line and ending with a newline; exit 100 when no node captured any.",
    )
    out.add_argument("job_id", metavar="ID", help="the job id")
    out.add_argument(
        "nodes", nargs="*", metavar="NODE", help="the node (only the first is used; none: all)"
    )
    out.add_argument(
        "--channel",
        default="stdout",
        metavar="stdout|stderr",
        help="The output channel to show: stdout or stderr. Default stdout.",
    )
    out.set_defaults(func=run_output)

    abort = jsub.add_parser(
        "abort",
        parents=[common],
        help="abort a job",
        description="Abort a job that has not finished and print it. Exit 0; 1 when the job "
        "has already finished (the server's 409: nothing to abort); 100 on other errors "
        "(e.g. an unknown job).",
    )
    abort.add_argument("job_id", metavar="ID", help="the job id")
    abort.set_defaults(func=run_abort)

    watch = jsub.add_parser(
        "watch",
        parents=[common],
        help="print a job's events as they happen, or the organization's",
        description="Print one line per event, 'EVENT  ID  DATA' (-F json: one JSON object "
        "per line). With an ID: the job's events from its start, until it completes. Without: "
        "the organization's job starts and completions, until Ctrl-C (exit 0). A dropped "
        "connection is resumed with Last-Event-ID.",
    )
    watch.add_argument("job_id", nargs="?", metavar="ID", help="the job id")
    watch.set_defaults(func=run_watch)
