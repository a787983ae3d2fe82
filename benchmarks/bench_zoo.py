"""The zoo table: cost of every registered model (``unetzoo bench`` prints the same table).

Per model at 224 x 224, 1 input channel, 9 classes: parameters, fvcore MACs (batch 1),
forward latency (batch 1), training throughput (forward + CE + backward + SGD step,
batch 8) and peak memory (process RSS of a fresh subprocess per model; CUDA max allocated
when a GPU is present). The measurement code lives in ``unetzoo.measure``.

    python benchmarks/bench_zoo.py                         # every model, 224 px
    python benchmarks/bench_zoo.py --models 'resnet*,unet' --json zoo.json
    python benchmarks/bench_zoo.py --tiny --models resunetpp   # CI smoke (size 32, batch 2)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import base_parser, emit

NOTES = (
    "MACs: fvcore `FlopCountAnalysis` (one count per multiply-accumulate of conv, matmul, "
    "linear, einsum); operators it has no handle for are not counted and are listed in "
    "`uncounted ops` (element-wise, pooling, softmax, interpolation: small next to the "
    "convolutions). Memory: `ru_maxrss` of a fresh process per model after the inference "
    "phase and after the training phase (`rss_base_MiB` = interpreter + torch + unetzoo "
    "before the model is built). `repeats` = timed repeats inference/training after one "
    "warm-up each: as many as fit the time budget, so big models have fewer. Random weights."
)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure the models and print/write the table; returns the rows."""
    from unetzoo.cli.bench import add_zoo_arguments  # the CLI's options
    from unetzoo.measure import select_models, table_columns, zoo_rows

    parser = base_parser(__doc__)
    add_zoo_arguments(parser, repeats=False)
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.batch, args.repeats, args.budget = 32, 2, 1, 1.0
        args.models = args.models or "resunetpp"
    names = select_models(args.models)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the machine line reports it
    rows = zoo_rows(names, args.size, args.batch, args.classes, args.repeats, args.budget,
                    args.device, args.in_process,
                    progress=lambda s: print(s, file=sys.stderr, flush=True),
                    threads=args.threads)
    emit(f"Zoo table ({args.size}x{args.size}, 1 channel, {args.classes} classes, "
         f"training batch {args.batch})", rows, args, columns=table_columns(rows),
         extra={"notes": NOTES})
    return rows


if __name__ == "__main__":
    main()
