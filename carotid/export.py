"""Export a model file for use without this package: ONNX (onnxruntime, any language) or TorchScript.

    python -m carotid.export --model RUN/models/best_model.pth --format onnx [--out model.onnx] [--frames DIR]

The exported model takes uint8 frames (batch, C, S, S) cropped and resized as in training and returns class
probabilities; class names, threshold, positive class, aggregation and the preprocessing are in its
metadata. A person model (--person-model attention|mean) takes one person's frames (n, C, S, S), any n, and returns
the person's probabilities (1, K) and each frame's attention (n,). Before anything is written it is run with
onnxruntime (or TorchScript) on real frames and compared with PyTorch; the largest difference is printed. See
carotid.model.export.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from carotid.commands import parse_export_args
from carotid.core.errors import UserError, run_cli

NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": ()}


def _export(argv: Sequence[str] | None) -> int:
    args = parse_export_args(argv)
    from carotid.core.run_dir import check_output_file
    from carotid.model.export import SUFFIX, TOLERANCE, export, metadata, parity_frames
    from carotid.model.file import ModelFile

    missing = [name for name in NEEDS[args.format] if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format {args.format} needs {', '.join(missing)}", "pip install 'carotid[export]'")
    model_path = Path(args.model)
    out = Path(args.out) if args.out else model_path.with_suffix(SUFFIX[args.format])
    if out.is_dir():
        raise UserError(f"--out {out} is a folder", f"pass a file name such as model{SUFFIX[args.format]}")
    inputs = {"the model file itself (--model)": model_path, "the parity frames (--frames)": args.frames}
    check_output_file(out, "--out", inputs, (SUFFIX[args.format],))
    model_file = ModelFile.load(model_path)
    frames, where = parity_frames(model_file, args.frames)
    difference = export(model_file, model_path, args.format, out, frames)
    meta = metadata(model_file, model_path)
    dynamic = "one person a run, any frame count" if model_file.person_level else "dynamic batch"
    print(f"exported {model_path} ({model_file.arch}, epoch {model_file.epoch}) to {out} ({args.format}, {dynamic})")
    print(f"input:  {meta['input']}, {meta['color']}; {meta['resize']}; scaled and normalised inside")
    print(f"output: {meta['output']}; classes {meta['class_names']}")
    print(f"use:    {meta['decision']}; {meta['person_rule']}")
    checked = f"max |ΔP| = {difference:.1e} (limit {TOLERANCE:.0e})"
    batches = "as one bag, frame by frame and a bag of 3" if model_file.person_level else "one batch and frame by frame"
    print(f"parity with PyTorch on {where} ({batches}): {checked}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_export, argv)


if __name__ == "__main__":
    sys.exit(main())
