"""Imports one Lambda handler and feeds it events, in a process of its own.

Run as ``python -I -S lambda_runner.py`` with a JSON request on stdin:
``{"sys_path": [...], "module": "models_fn", "attr": "handler", "events": [...]}``.
``-I -S`` leave only the standard library on ``sys.path``; the request adds the function's
code, the layer and an emulated Lambda runtime, like /var/task, /opt/python and /var/runtime.

Prints one JSON line: the handler's results, which heavy ML modules got imported (must be
none) and every imported module file outside the allowed roots (must be none).
"""

import importlib
import json
import os
import sys
import sysconfig

HEAVY = ("torch", "transformers", "peft", "accelerate", "llama_cpp", "safetensors")


def main() -> None:
    request = json.loads(sys.stdin.read())
    sys.path[:0] = request["sys_path"]
    module = importlib.import_module(request["module"])
    handler = getattr(module, request.get("attr", "handler"))
    results = [handler(event, None) for event in request.get("events", [])]

    roots = [os.path.realpath(p) for p in request["sys_path"]]
    roots += [os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")]
    foreign = []
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if name == "__main__" or not path:
            continue
        if not any(os.path.realpath(path).startswith(r + os.sep) for r in roots):
            foreign.append(f"{name}: {path}")
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    print(json.dumps({"results": results, "heavy": heavy, "foreign": sorted(foreign)}))


if __name__ == "__main__":
    main()
