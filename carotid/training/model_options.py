"""carotid-train's model and optimisation options: architecture and weights, person models, fine-tuning, the
optimiser, schedule and precision."""

from __future__ import annotations

from dataclasses import dataclass

from carotid.core.options import opt
from carotid.evaluation.registry import MONITORS
from carotid.model import GLOBAL_POOLS, MODEL_HELP, PERSON_MODELS


@dataclass
class ModelOptions:
    """The model options and the optimisation ones (a part of `TrainConfig`)."""

    model: str = opt("resnet18", MODEL_HELP, group="model")
    pretrained: bool = opt(
        False,
        "Download the ImageNet weights of --model (torchvision's or timm's; needs internet; offline use "
        "--pretrained-weights).",
        group="model",
    )
    pretrained_weights: str | None = opt(
        None,
        "Local file of starting weights (offline): a timm or torchvision state dict (.safetensors, .pth, .bin), a "
        "Lightning/DeepSpeed checkpoint or a carotid model file. Wrapper prefixes are stripped, a head of another "
        "class count skipped, an RGB stem summed for gray frames; the run prints what loaded.",
        group="model",
    )
    freeze_backbone_epochs: int = opt(
        0,
        "Train only the classifier head for the first N epochs, the backbone's weights and BatchNorm statistics "
        "frozen; N ≥ --epochs is a linear probe.",
        group="model",
        metavar="N",
    )
    layer_decay: float | None = opt(
        None,
        "Layer-wise LR decay (e.g. 0.75): each layer group from the head down gets this factor more (timm models, "
        "which define their layer groups).",
        group="model",
    )
    ema: bool = opt(
        False,
        "Keep an exponential moving average of the weights (timm's ModelEmaV3); validation scores it and the "
        "best/final model files hold it.",
        group="model",
    )
    ema_decay: float = opt(0.998, "--ema: decay per optimizer step (warmed up over the first steps).", group="model")
    drop_path: float | None = opt(
        None, "Stochastic depth rate (e.g. 0.1) for timm architectures that have drop-path layers.", group="model"
    )
    global_pool: str = opt(
        "auto",
        "How the encoder turns its last feature map into one vector per frame: avg = the architecture's own "
        "average; max = the strongest response anywhere in the frame, so that a finding a few pixels wide (a "
        "small plaque) is not averaged away; auto = max for a person model whose encoder starts from random "
        "weights (measured in docs/EVALUATION.md), avg otherwise (pretrained weights were learned under their "
        "architecture's average). Recorded in the model file.",
        choices=("auto", *GLOBAL_POOLS),
        group="model",
    )
    load_model: str | None = opt(
        None,
        "Start from the weights of a carotid model file (or a bare state dict) and train in a new run directory.",
        group="model",
    )
    person_model: str = opt(
        "attention",
        "attention = a person-level model: the frame encoder's embeddings of a person's frames pooled by gated "
        "attention (per-frame weights are an output), the loss on the person's label (the default: ahead of the "
        "frame model on every measured run, docs/EVALUATION.md); mean = the same with the embeddings' mean; "
        "frames = a frame classifier trained with each frame labelled as its person, probabilities pooled by "
        "--person-aggregation.",
        choices=PERSON_MODELS,
        group="model",
    )
    bag_size: int = opt(
        16,
        "Person models: frames sampled at random (per epoch, seeded) from each person for a training step; "
        "evaluation and predict use all of a person's frames.",
        group="model",
        metavar="K",
    )
    stratified_steps: bool = opt(
        True,
        "Person models: deal each training step's persons from every class in its share of the training persons "
        "(each class shuffled, then interleaved), so a step of a few persons is never all one class; "
        "--no-stratified-steps = a plain shuffle (slower to learn, see docs/EVALUATION.md).",
        group="model",
    )
    attention_dropout: float = opt(
        0.0,
        "--person-model attention, training only: dropout on the attention network's hidden units (CLAM uses "
        "0.25); evaluation, predict and ONNX use every unit.",
        group="model",
        metavar="P",
    )
    mask_top_frames: int = opt(
        0,
        "--person-model attention, training only: leave each of a person's K highest-attention frames out of its "
        "pooling with probability 1/2 per step (at least one frame kept; stochastic top-k masking, as in ACMIL), "
        "so the model cannot rest on one frame alone. 0 = off.",
        group="model",
        metavar="K",
    )
    compile: bool = opt(False, "torch.compile the model (see docs/PERFORMANCE.md for when it pays).", group="model")
    # Optimisation
    epochs: int = opt(50, "Number of passes over the training persons' frames.")
    batch_size: int = opt(
        32,
        "Frames per batch on each process, for every model (the effective batch is this x processes x "
        "accumulation steps); a person model (--person-model attention/mean) takes as many persons a step as "
        "bring about this many frames (each up to --bag-size), so the same command makes about as many optimizer "
        "steps for every --person-model. The start-up block prints persons and frames per step and the steps.",
    )
    lr: float = opt(1e-4, "Peak learning rate of AdamW.")
    weight_decay: float = opt(1e-4, "AdamW weight decay.")
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.")
    scheduler: str = opt(
        "cosine", "Learning-rate schedule over optimizer steps.", choices=("cosine", "step", "plateau", "none")
    )
    warmup_epochs: float = opt(1.0, "Linear warm-up length in epochs (cosine and step schedules).")
    lr_step_epochs: int = opt(10, "step schedule: multiply the LR by lr_gamma every this many epochs.")
    lr_gamma: float = opt(0.1, "step and plateau schedules: LR multiplier.")
    label_smoothing: float = opt(0.0, "Cross-entropy label smoothing.")
    class_weights: str = opt(
        "none",
        "auto = weight the loss by inverse person-class frequency of the training split.",
        choices=("none", "auto"),
    )
    balanced_sampler: bool = opt(
        False, "Sample training frames so every class is drawn equally often (works under DDP)."
    )
    clip_grad_norm: float | None = opt(None, "Clip the gradient norm to this value.")
    early_stopping_patience: int = opt(0, "Stop after this many epochs without improvement of --monitor (0 = never).")
    monitor: str = opt(
        "auto",
        "Validation metric that picks best_model.pth (auto: val_auc for 2 classes, else val_accuracy).",
        choices=MONITORS,
    )
    mixed_precision: str | None = opt(
        None, "no / fp16 / bf16 (default: what `accelerate launch` or its config says).", choices=("no", "fp16", "bf16")
    )
