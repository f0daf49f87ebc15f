"""Run a raw exported library on inputs from an .npz file; write outputs to another .npz.

Used by the compiler to check numerics before an artifact is signed, natively or under qemu-user
in an emulated sysroot: ``python -m edgeforge_runtime._runner LIB IN.npz OUT.npz``. It needs only
numpy, tvm_ffi and libtvm_runtime.so.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import numpy as np

    from ._vm import VirtualMachine, to_numpy

    lib, in_path, out_path = argv[:3]
    device = argv[3] if len(argv) > 3 else "cpu"
    with np.load(in_path) as data:
        names = [str(n) for n in data["__order__"]]
        inputs = [np.ascontiguousarray(data[n]) for n in names]
    vm = VirtualMachine(lib, device=device)
    # bfloat16 outputs as float32 (exact): .npz cannot hold ml_dtypes arrays.
    outputs = [to_numpy(t).astype(np.float32) if str(t.dtype) == "bfloat16"
               else to_numpy(t).copy() for t in vm.run(inputs)]
    np.savez(out_path, *outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
