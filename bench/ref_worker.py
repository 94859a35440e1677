"""The reference-virtualenv side of the JSON-lines protocol that bench_codec.py and
bench_generate.py use to interleave PyTorch reference timings with ours (machine.ReferenceWorker
is the other side). Imported first by ref_*_worker.py: it quiets the libraries and moves their
prints off stdout before torch is imported.

    {"build": NAME, ...}   the worker's builder returns (fn, params); fn runs once untimed;
                           reply {"params": ..., "torch": version, "threads": n}
    {"time": NAME}         runs fn once; reply {"seconds": wall seconds}
"""

import json
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # audiolm's generate() wraps its loop in tqdm
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPLY = sys.stdout
sys.stdout = sys.stderr  # library prints must not corrupt the reply stream


def nparams(module) -> int:
    return sum(p.numel() for p in module.parameters())


def serve(builder, *, build_seed: int, time_seed: int) -> None:
    """Answers requests on stdin until it closes; `builder(request)` -> (fn, params)."""
    import torch

    torch.set_num_threads(int(os.environ.get("REF_THREADS", "2")))
    cases = {}
    for line in sys.stdin:
        req = json.loads(line)
        if "build" in req:
            fn, params = builder(req)
            torch.manual_seed(build_seed)
            fn()  # warm-up
            cases[req["build"]] = fn
            reply = {"params": params, "torch": torch.__version__, "threads": torch.get_num_threads()}
        else:
            torch.manual_seed(time_seed)  # the same random draws on every call
            t = time.perf_counter()
            cases[req["time"]]()
            reply = {"seconds": time.perf_counter() - t}
        REPLY.write(json.dumps(reply) + "\n")
        REPLY.flush()
