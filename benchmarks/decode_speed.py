"""What safe decoding costs: oneshot's checked decoder against a bare ``cv2.imdecode`` on Omniglot PNGs.

Reads the first N PNG members of ``images_background.zip`` into memory, then times decoding them
with plain OpenCV and with :func:`oneshot.data.decode.decode_image` (header check, pixel cap,
fast path for plain PNGs), best of several rounds, and checks that both give the same pixels.

Run from the repository root::

    python -m benchmarks.decode_speed --data ../shared/data/omniglot --out benchmarks/results/decode_speed.json
"""
from __future__ import annotations

import argparse
import json
import time
import zipfile

import cv2
import numpy as np

from benchmarks import write_result
from oneshot.data.decode import decode_image
from oneshot.data.omniglot import omniglot_root


def best_of(rounds: int, work) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="Omniglot folder (default: $OMNIGLOT_DIR)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    with zipfile.ZipFile(omniglot_root(args.data) / "images_background.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))[: args.images]
        blobs = [archive.read(n) for n in names]
    plain = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE) for b in blobs]
    safe = [decode_image(b, n) for b, n in zip(blobs, names)]
    result = {
        "images": len(blobs),
        "rounds": args.rounds,
        "cv2_us_per_image": 1e6 * best_of(args.rounds, lambda: [cv2.imdecode(np.frombuffer(b, np.uint8),
                                                                             cv2.IMREAD_GRAYSCALE) for b in blobs])
        / len(blobs),
        "oneshot_us_per_image": 1e6 * best_of(args.rounds, lambda: [decode_image(b, "x") for b in blobs]) / len(blobs),
        "identical_pixels": all(np.array_equal(a, b) for a, b in zip(plain, safe)),
        "note": "single process on a shared 2-core machine",
    }
    print(json.dumps(result, indent=2))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
