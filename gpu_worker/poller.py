"""The local stand-in for the deployed dispatch path: SQS -> the same `train` entrypoint.

Deployed, the dispatch Lambda submits each message to AWS Batch, which runs
`python -m gpu_worker train --job-id ID`. Locally this loop receives the message and calls
the same JobRunner in-process. A message is deleted once its job has reached a final state
(or was a duplicate); an infrastructure error leaves it for redelivery.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("gpu_worker.poller")
RETRY_SECONDS = 5


def poll(
    queue=None,
    runner=None,
    *,
    once: bool = False,
    wait_seconds: int = 10,
    stop: threading.Event | None = None,
) -> int:
    """Run jobs from `queue` until stopped (or, with once=True, until it is empty).

    Returns the number of messages handled. `queue` and `runner` default to the ones the
    process settings describe.
    """
    if queue is None or runner is None:
        from gpu_worker.runtime import job_queue, job_runner

        queue = queue or job_queue()
        runner = runner or job_runner()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    handled = 0
    log.info("polling the training queue")
    while not stop.is_set():
        try:
            messages = queue.receive(max_messages=1, wait_seconds=wait_seconds)
        except Exception:  # noqa: BLE001 - the queue may be briefly unreachable; keep polling
            log.exception("receiving from the training queue failed; retrying")
            if once:
                raise
            stop.wait(RETRY_SECONDS)
            continue
        if not messages:
            if once:
                break
            continue
        for receipt, body in messages:
            job_id = body.get("job_id") if isinstance(body, dict) else None
            if not job_id:
                log.error("dropping malformed message: %r", body)
                queue.delete(receipt)
                continue
            try:
                outcome = runner.run(job_id)
            except Exception:
                log.exception("job %s hit an infrastructure error; leaving it for redelivery",
                              job_id)
                continue
            log.info("job %s: %s %s", job_id, outcome.state, outcome.details)
            queue.delete(receipt)
            handled += 1
    return handled
