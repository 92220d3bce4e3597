"""The reference of the whole-run and first-step comparisons: a plain Accelerate training loop as a researcher
writes it in one script (imports first, then argparse).

    python -m benchmarks.handwritten --root-dir DIR --label-excel FILE --splits splits.json --output-dir OUT

It trains on the same frames, model, batch size, optimizer, augmentation and validation split as
carotid.train; frames are decoded with Pillow in the loader workers, and the augmentation is carotid's kornia
preset on the device (a script doing the same would write the same kornia calls). It never imports the rest
of carotid: carotid's import cost is part of what is compared."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    """The reference: a plain Accelerate training loop as a researcher writes it in one script (imports
    first, then argparse), on the same frames, model, batch size, optimizer, augmentation and validation
    split as carotid.train. Frames are decoded with Pillow in the loader workers; the augmentation is
    carotid's kornia preset on the device (a script doing the same would write the same kornia calls).
    Per epoch: train, validate (loss, accuracy), keep the best weights; at the end the final weights.
    No checkpoints, metrics files or plots."""
    import numpy as np
    import openpyxl
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from PIL import Image

    from carotid.data.frames.transforms import NORMALIZATION, eval_preset, train_preset

    parser = argparse.ArgumentParser(description="A hand-written Accelerate loop (the benchmarks' reference).")
    add = parser.add_argument
    add("--root-dir", required=True, help="One folder of frames per person.")
    add("--label-excel", required=True, help="Column A: person ID, column B: label; one header row.")
    add("--splits", required=True, help="JSON with the 'train' and 'val' person IDs.")
    add("--output-dir", required=True, help="Where best.pth and final.pth go.")
    add("--model", default="small_cnn", help="Architecture (default: small_cnn).")
    add("--image-size", type=int, default=224, help="Training resolution (default: 224).")
    add("--batch-size", type=int, default=32, help="Frames per batch (default: 32).")
    add("--epochs", type=int, default=3, help="Epochs (default: 3).")
    add("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4).")
    add("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: 1e-4).")
    add("--num-workers", type=int, default=2, help="DataLoader workers (default: 2).")
    add("--mixed-precision", default="no", help="no, fp16 or bf16 (default: no).")
    add("--augment", default="ultrasound", help="carotid's augmentation preset (default: ultrasound).")
    add("--seed", type=int, default=42, help="Seed (default: 42).")
    args = parser.parse_args(argv)

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    sheet = openpyxl.load_workbook(args.label_excel, read_only=True).active
    labels = {str(row[0]).strip(): str(row[1]).strip() for row in sheet.iter_rows(min_row=2, values_only=True)}
    classes = sorted(set(labels.values()))
    splits = json.loads(Path(args.splits).read_text(encoding="utf-8"))

    def frames_of(persons):
        return [
            (str(path), classes.index(labels[person]))
            for person in persons
            for path in sorted(Path(args.root_dir, person).rglob("*"))
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
        ]

    class Frames(torch.utils.data.Dataset):
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, index):
            path, label = self.items[index]
            with Image.open(path) as image:
                image = image.convert("L").resize((args.image_size, args.image_size), Image.BILINEAR)
            return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())[None], label

    def loader(persons, batch_size, train):
        workers = args.num_workers
        return torch.utils.data.DataLoader(
            Frames(frames_of(persons)),
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=accelerator.device.type == "cuda",
        )

    model = handwritten_model(args.model, len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    train_loader = loader(splits["train"], args.batch_size, True)
    val_loader = loader(splits["val"], 2 * args.batch_size, False)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)

    augment = train_preset(args.augment, 1).to(accelerator.device)
    normalise = eval_preset(**NORMALIZATION[1]).to(accelerator.device)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    best = float("inf")
    for epoch in range(args.epochs):
        model.train()
        for frames, targets in train_loader:
            loss = F.cross_entropy(model(augment(frames)), targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        total, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for frames, targets in val_loader:
                logits = model(normalise(frames))
                logits, targets = accelerator.gather_for_metrics((logits, targets))
                total += F.cross_entropy(logits, targets, reduction="sum").item()
                correct += (logits.argmax(1) == targets).sum().item()
                count += len(targets)
        val_loss = total / max(count, 1)
        accelerator.print(f"epoch {epoch + 1}: val_loss {val_loss:.4f}, val_acc {correct / max(count, 1):.3f}")
        if val_loss < best:
            best = val_loss
            accelerator.save(accelerator.unwrap_model(model).state_dict(), out / "best.pth")
    accelerator.save(accelerator.unwrap_model(model).state_dict(), out / "final.pth")
    return 0


def handwritten_model(arch: str, num_classes: int):
    """carotid's architecture, built without importing carotid (whose import cost is what is compared).

    small_cnn is written out again (the parent checks that every weight's name and shape match
    carotid.model.registry's); the torchvision architectures come from carotid's registry, since both
    sides import torchvision for them anyway."""
    import torch
    from torch import nn

    if arch != "small_cnn":
        from carotid.model.registry import build_model

        return build_model(arch, num_classes, 1)

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            layers, channels = [], 1
            for out in (32, 64, 128, 256):
                layers += [nn.Conv2d(channels, out, 3, 2, 1, bias=False), nn.GroupNorm(8, out), nn.ReLU(inplace=True)]
                channels = out
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(channels, num_classes)

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    return SmallCNN()


if __name__ == "__main__":
    sys.exit(main())
