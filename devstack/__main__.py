"""The local stack: everything the product needs on one laptop, no AWS account.

    python -m devstack serve   moto server (DynamoDB, S3, SQS) with the table, bucket and
                               queue from template.yaml; the API on :8080 (the same routers the
                               Lambda functions serve); the inference worker on :8081 and the
                               training poller (unless --no-worker). Ctrl-C stops everything.
    python -m devstack token   print a bearer token for the local stack
    python -m devstack demo    the main job (see devstack/demo.py)
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the local stack in the foreground")
    serve.add_argument("--data-dir", default=".data", help="secret, model, state, caches")
    serve.add_argument("--no-persist", action="store_true",
                       help="start empty and save nothing on exit")
    serve.add_argument("--no-worker", action="store_true",
                       help="API and storage only (load/unload/query answer 503)")
    serve.add_argument("--port", type=int, default=8080)
    token = sub.add_parser("token", help="print a local bearer token")
    token.add_argument("--data-dir", default=".data")
    token.add_argument("--scopes", default="lora:read lora:write lora:admin",
                       help="space-separated scopes (default: all)")
    token.add_argument("--sub", default="local-user")
    token.add_argument("--tenant", default="local")
    token.add_argument("--ttl", type=int, default=12 * 3600, help="lifetime in seconds")
    demo = sub.add_parser("demo", help="train an adapter on the docs Q&A and query it")
    demo.add_argument("--data-dir", default=".data")
    demo.add_argument("--url", default="http://127.0.0.1:8080")
    args = parser.parse_args(argv)

    if args.command == "token":
        from devstack.stack import mint_token

        print(mint_token(args.data_dir, sub=args.sub, tenant=args.tenant,
                         scopes=args.scopes.split(), ttl_seconds=args.ttl))
        return 0
    if args.command == "serve":
        from devstack.stack import serve_forever

        serve_forever(args.data_dir, port=args.port, persist=not args.no_persist,
                      worker=not args.no_worker)
        return 0
    if args.command == "demo":
        from devstack.demo import run_demo

        return run_demo(args.data_dir, args.url)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
