"""The worker's entrypoints. The container image, AWS Batch, ECS and the local stack all run
these same commands:

    python -m gpu_worker train --job-id ID   one training job (AWS Batch runs this)
    python -m gpu_worker poll                consume the training queue, run each job (local)
    python -m gpu_worker serve               the inference server (ECS runs this)
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpu_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run one training job to completion")
    train.add_argument("--job-id", required=True, help="the job id the API created")
    poll = sub.add_parser("poll", help="consume the training queue and run each job")
    poll.add_argument("--once", action="store_true", help="stop when the queue is empty")
    poll.add_argument("--wait-seconds", type=int, default=10, help="SQS long-poll wait")
    sub.add_parser("serve", help="serve inference over HTTP (the internal worker API)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "train":
        from gpu_worker.runtime import job_runner

        outcome = job_runner().run(args.job_id, wait_if_running=True)
        print(f"job {outcome.job_id}: {outcome.state} {outcome.details}".rstrip())
        # A failed job is recorded on the version; the process still succeeded at its work.
        return 0
    if args.command == "poll":
        from gpu_worker.poller import poll

        poll(once=args.once, wait_seconds=args.wait_seconds)
        return 0
    if args.command == "serve":
        from gpu_worker.runtime import serve

        serve()
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
