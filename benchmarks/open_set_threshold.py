"""Calibrate the "unknown" threshold of 1:K identification on background validation alphabets.

Half of the validation alphabets' characters are "known": drawers 1-5 of each are indexed, the
other drawings are known queries; every drawing of the other half is an unknown query. The queries
are split in two disjoint parts: the threshold maximising open-set accuracy is calibrated on one
(known characters' drawers 6-12, half the unknown characters) and the open-set report is on the
other (drawers 13-20, the other unknown characters), so the figures are out of sample. Only
background alphabets are read, so the threshold may be used on the evaluation alphabets.

Run from the repository root::

    python -m benchmarks.open_set_threshold --data ../shared/data/omniglot --out runs/open_set.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks import validation_alphabets, write_result
from oneshot.embedder.artifact import load_model
from oneshot.embedder.encode import encode
from oneshot.index.vector_index import VectorIndex
from oneshot.pipelines.evaluation.open_set import calibrate_unknown_threshold, open_set_report
from oneshot.pipelines.jobs.train import VALIDATION_ALPHABETS


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="Omniglot folder (default: $OMNIGLOT_DIR)")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--gallery-drawers", type=int, default=5, help="drawings of each known character indexed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    split, table = validation_alphabets(args.data)
    model = load_model(args.model)
    embeddings = encode(model, split.read(table["path"]))
    rng = np.random.default_rng(args.seed)
    characters = table["label"].unique()
    known = table["label"].isin(rng.choice(characters, len(characters) // 2, replace=False)).to_numpy()
    in_gallery = known & (table["drawer"] <= args.gallery_drawers).to_numpy()
    known_queries = known & ~in_gallery
    drawer = table["drawer"].to_numpy()
    middle = (args.gallery_drawers + drawer.max() + 1) // 2
    unknown_characters = characters[~np.isin(characters, table["label"][known].unique())]
    calibration_unknown = np.isin(table["label"], rng.choice(unknown_characters, len(unknown_characters) // 2, replace=False))
    parts = {"calibration": (known_queries & (drawer <= middle), ~known & calibration_unknown),
             "report": (known_queries & (drawer > middle), ~known & ~calibration_unknown)}
    index = VectorIndex.build(embeddings[in_gallery], table[in_gallery].reset_index(drop=True), model.metric)
    labels = table["label"].to_numpy()
    known_rows, unknown_rows = parts["calibration"]
    threshold = calibrate_unknown_threshold(index, embeddings[known_rows], labels[known_rows], embeddings[unknown_rows])
    known_rows, unknown_rows = parts["report"]
    report = open_set_report(index, embeddings[known_rows], labels[known_rows], embeddings[unknown_rows], threshold)
    result = {"model": args.model or "shipped default", "model_fingerprint": model.fingerprint,
              "validation_alphabets": list(VALIDATION_ALPHABETS["background"]),
              "gallery_drawers": args.gallery_drawers, "seed": args.seed,
              "calibrated_on": f"known characters' drawers {args.gallery_drawers + 1}-{middle} and "
                               f"{int(calibration_unknown.sum() // 20)} unknown characters",
              "reported_on": f"known characters' drawers {middle + 1}-{drawer.max()} and the other "
                             f"{len(unknown_characters) - int(calibration_unknown.sum() // 20)} unknown characters",
              **report}
    print(json.dumps(result, indent=2))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
