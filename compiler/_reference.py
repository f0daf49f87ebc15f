"""Run onnxruntime on a model in a child process:
``python -m compiler._reference MODEL IN OUT [IN OUT ...]`` (one session, one run per pair).

The reference run for verification is isolated like the TVM build: onnxruntime itself can
crash on unusual models, and that must not take the caller down."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import numpy as np
    import onnxruntime as ort

    model, pairs = argv[0], argv[1:]
    if not pairs or len(pairs) % 2:
        print("usage: python -m compiler._reference MODEL IN OUT [IN OUT ...]", file=sys.stderr)
        return 2
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    for in_path, out_path in zip(pairs[::2], pairs[1::2]):
        with np.load(in_path) as data:
            feed = {k: data[k] for k in data.files if k != "__order__"}
        outputs = sess.run(None, feed)
        np.savez(out_path, *[np.asarray(o) for o in outputs])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
