# compile time of the cifarops and reference PyramidNet, alternating, each in a fresh process with an empty cache
import json, sys, time
from cifarops.bench import models as M
base = {"model": "pyramidnet110-a270-shakedrop", "device": "cpu", "batch": 32, "warmup": 1, "steps": 1,
        "autocast": False, "channels_last": False, "overrides": {"depth": 20, "alpha": 48}, "checkpoint": "none",
        "compile": True}
out = {"cifarops": [], "reference": []}
for layers in ["reference", "cifarops", "reference", "cifarops"]:
    t = M._in_new_process("compile", {**base, "layers": layers})
    out[layers].append(t)
    print(layers, f"{t:.1f} s", flush=True)
print(json.dumps(out))
