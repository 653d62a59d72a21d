"""Carrying out one job the state machine started: its job file, its environment, its process.

The agent decides nothing here: ``jobstate`` says start, this sets the job up and runs it, and
the outcome goes back to ``jobstate``. A job that cannot be set up ends failed, never stuck.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import trio

from appliance.client import jobfile, jobstate, runner
from appliance.client.config import ClientConfig
from appliance.core.jobspec import decode_job_file

log = logging.getLogger("pushy.client")


async def run(
    job: jobstate.Job,
    config: ClientConfig,
    *,
    node: str,
    kill: trio.Event,
    on_started: Callable[[], None],
    on_output: runner.OnOutput | None = None,
) -> runner.Outcome:
    """Write the job file (if any), build the environment, run the command to its end and
    remove the file; any failure to set up is a failed ``Outcome`` with the reason."""
    path = None
    try:
        if job.file is not None:
            uid, gid = jobfile.ids_of(job.user)
            path = jobfile.write_job_file(
                config.file_dir, job.id, decode_job_file(job.file), uid=uid, gid=gid
            )
        env = jobfile.build_env(
            os.environ,
            job.env,
            allowed_overwritable=config.allowed_overwritable_env_vars,
            node_name=node,
            job_id=job.id,
            job_file=path,
        )
        return await runner.run_job(
            job.command_line,
            env=env,
            user=job.user,
            dir=job.dir,
            capture=job.capture,
            kill_event=kill,
            on_started=on_started,
            on_output=on_output,
        )
    except Exception as exc:  # a job that cannot be set up ends failed, never stuck
        log.exception("[%s] job %s could not be started", node, job.id)
        return runner.Outcome(None, None, b"", b"", False, str(exc))
    finally:
        if path is not None:
            jobfile.remove_job_file(path)
