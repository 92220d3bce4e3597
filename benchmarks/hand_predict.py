"""The reference of the predict comparison: a hand-written inference loop over a folder of person folders
(Pillow decoding in the loader workers, the model file's weights, softmax, one CSV row a frame).

    python -m benchmarks.hand_predict --model best_model.pth --input DIR --out predictions.csv"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main(argv=None) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from benchmarks.handwritten import handwritten_model

    parser = argparse.ArgumentParser(description="A hand-written inference loop (the benchmarks' reference).")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)

    saved = torch.load(args.model, weights_only=True, map_location="cpu")
    size, norm = saved["image_size"], saved["normalization"]
    model = handwritten_model(saved["arch"], len(saved["class_names"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    paths = sorted(p for p in Path(args.input).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    class Frames(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, index):
            with Image.open(paths[index]) as image:
                image = image.convert("L").resize((size, size), Image.BILINEAR)
            return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())[None]

    loader = torch.utils.data.DataLoader(Frames(), batch_size=args.batch_size, num_workers=args.num_workers)
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
    rows = []
    with torch.inference_mode():
        for frames in loader:
            probabilities = model((frames.float() / 255 - mean) / std).softmax(1)
            rows += probabilities[:, -1].tolist()
    with open(args.out, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "probability"])
        writer.writerows(zip(map(str, paths), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
