"""Interop checks against the Python `safetensors` package (run by test/safetensors_test.ts).

  python3 test/safetensors_interop.py write PATH SEED   writes a file of every dtype with numpy + ml_dtypes
  python3 test/safetensors_interop.py read PATH         prints every tensor's dtype, shape and hex bytes
  python3 test/safetensors_interop.py rewrite IN OUT    loads IN and saves the same tensors to OUT

`read` prints JSON {"metadata": ..., "tensors": {name: {"dtype", "shape", "hex"}}}, reading the
bytes two ways that must agree: safetensors.deserialize (raw) and safe_open(framework="numpy")
(for the dtypes numpy + ml_dtypes know).
"""

import json
import sys

import ml_dtypes
import numpy as np
import safetensors
from safetensors import deserialize, safe_open
from safetensors.numpy import save_file

NUMPY = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I8": np.int8,
    "U8": np.uint8,
    "I32": np.int32,
    "I64": np.int64,
}
# safe_open(framework="numpy") in safetensors 0.8.0 knows these; it refuses the fp8 codes.
SAFE_OPEN_NUMPY = {"F32", "F16", "BF16", "I8", "U8", "I32", "I64"}


def write(path, seed):
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, (code, dtype) in enumerate(NUMPY.items()):
        size = np.dtype(dtype).itemsize
        shape = [int(rng.integers(0, 4)), int(rng.integers(1, 5))] if i % 2 else [int(rng.integers(0, 9))]
        count = int(np.prod(shape))
        raw = rng.integers(0, 256, size=count * size, dtype=np.uint8)
        tensors[f"model.layers.{i}.{code.lower()}"] = raw.view(dtype).reshape(shape)
    save_file(tensors, path, metadata={"format": "np"})


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    out = {}
    for name, info in deserialize(data):
        out[name] = {"dtype": info["dtype"], "shape": list(info["shape"]), "hex": bytes(info["data"]).hex()}
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata()
        for name in f.keys():
            if out[name]["dtype"] in SAFE_OPEN_NUMPY:
                array = f.get_tensor(name)
                assert list(array.shape) == out[name]["shape"], name
                assert array.tobytes().hex() == out[name]["hex"], name
                out[name]["numpy"] = True
    print(json.dumps({"version": safetensors.__version__, "metadata": metadata, "tensors": out}))


def rewrite(source, target):
    with open(source, "rb") as f:
        data = f.read()
    tensors = {}
    for name, info in deserialize(data):
        dtype = NUMPY[info["dtype"]]
        tensors[name] = np.frombuffer(bytes(info["data"]), dtype=dtype).reshape(info["shape"])
    with safe_open(source, framework="numpy") as f:
        metadata = f.metadata()
    save_file(tensors, target, metadata=metadata)


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "write":
        write(sys.argv[2], int(sys.argv[3]))
    elif command == "read":
        read(sys.argv[2])
    elif command == "rewrite":
        rewrite(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {command}")
