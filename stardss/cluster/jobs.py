"""Ray's Jobs API with a bound on every call: the Jobs SDK sets no timeout on its HTTP calls,
so each one here runs in a thread that is given up after a timeout, and a dead or hung head
ends a command with a sentence (ClusterError, exit 1) instead of a hang."""
from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import Optional

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
REQUEST_TIMEOUT_S = 60.0  # one HTTP call to the head
POLL_S = 5.0  # log silence after which the job's status is checked
STOP_TIMEOUT_S = 120.0
ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # the order `ray job` reads them in


class ClusterError(RuntimeError):
    """The Ray head refused, failed or did not answer in time."""


def bounded(what: str, timeout_s: float, fn, *args, **kwargs):
    """fn(*args, **kwargs) in a daemon thread, given up after `timeout_s`; any failure becomes a
    ClusterError naming `what` (the Jobs SDK's HTTP calls have no timeout of their own)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # handed to the caller
            box["error"] = err

    thread = threading.Thread(target=run, name=f"stardss {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ClusterError(f"{what}: no answer from the Ray head within {timeout_s:g}s")
    if "error" in box:
        err = box["error"]
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        hint = (" (a token-auth head needs RAY_AUTH_MODE=token and its token in ~/.ray/auth_token,"
                " RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
                if type(err).__name__ == "AuthenticationError" else "")
        raise ClusterError(f"{what}: {type(err).__name__}: {lines[0] if lines else ''}{hint}"
                           ) from err
    return box["value"]


def connect(address: Optional[str]):
    """A JobSubmissionClient for `address` (the head's dashboard URL), else the address in
    RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, as `ray job` reads them."""
    from ray.job_submission import JobSubmissionClient

    address = address or next((os.environ[v] for v in ADDRESS_VARS if os.environ.get(v)), None)
    if not address:
        raise ClusterError("no Ray head: pass --address http://HEAD:8265 or set "
                           "RAY_API_SERVER_ADDRESS")
    saved = {v: os.environ.pop(v) for v in ADDRESS_VARS if v in os.environ}
    try:  # the SDK lets these variables override its address argument: --address wins here
        return bounded(f"connect to {address}", REQUEST_TIMEOUT_S, JobSubmissionClient, address)
    finally:
        os.environ.update(saved)


def status(client, job_id: str) -> dict:
    """Status, message and times of a job; its runtime_env (secrets) is left out."""
    info = bounded(f"status of {job_id}", REQUEST_TIMEOUT_S, client.get_job_info, job_id)
    return {"job_id": job_id, "status": str(info.status), "message": info.message,
            "entrypoint": info.entrypoint, "start_time": info.start_time,
            "end_time": info.end_time, "driver_exit_code": info.driver_exit_code,
            "metadata": info.metadata}


def follow(client, job_id: str, timeout_s: Optional[float] = None, out=None) -> str:
    """Print the job's logs as they come until it ends (or `timeout_s` passes: ClusterError);
    returns its final status. Whenever the stream is silent for POLL_S the status is checked,
    which fails within REQUEST_TIMEOUT_S when the head is gone."""
    out = out or sys.stdout
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    async def tail():
        logs = client.tail_job_logs(job_id)
        nxt = asyncio.ensure_future(logs.__anext__())
        ended = False
        try:
            while True:
                left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
                done, _ = await asyncio.wait({nxt}, timeout=max(left, 0.0))
                if done:
                    try:
                        out.write(nxt.result())
                    except StopAsyncIteration:
                        return
                    except Exception as err:  # the stream broke: did the job end, or the head?
                        try:
                            if status(client, job_id)["status"] in TERMINAL:
                                return
                        except ClusterError as gone:
                            raise ClusterError(f"the log stream of {job_id} broke and the head "
                                               f"does not answer: {gone}") from err
                        raise ClusterError(f"the log stream of {job_id} broke: {err}") from err
                    out.flush()
                    nxt = asyncio.ensure_future(logs.__anext__())
                elif deadline is not None and time.monotonic() >= deadline:
                    raise ClusterError(f"job {job_id}: not finished within {timeout_s:g}s "
                                       f"(--timeout); it keeps running on the cluster")
                elif status(client, job_id)["status"] in TERMINAL:
                    if ended:  # ended a poll ago and the stream is still open: stop waiting
                        return
                    ended = True
        finally:
            nxt.cancel()

    asyncio.run(tail())
    final = status(client, job_id)["status"]
    if final not in TERMINAL:
        raise ClusterError(f"the log stream of {job_id} closed while it is {final}")
    return final


def stop(client, job_id: str, timeout_s: float = STOP_TIMEOUT_S) -> dict:
    """Ask the job to stop and wait for a terminal status."""
    bounded(f"stop {job_id}", REQUEST_TIMEOUT_S, client.stop_job, job_id)
    deadline = time.monotonic() + timeout_s
    while (st := status(client, job_id))["status"] not in TERMINAL:
        if time.monotonic() >= deadline:
            raise ClusterError(f"job {job_id}: still {st['status']} {timeout_s:g}s after the "
                               f"stop request")
        time.sleep(0.5)
    return st
