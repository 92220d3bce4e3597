"""Models: the architecture registry (`registry`), pretrained weights (`weights`) and the model-file format (`file`).

The architecture names and the ways frame probabilities become a person's (both recorded in a model file)
live here, free of torch, so option parsing can read them without importing it.

Which library builds a `--model` name (the rule the README documents):
- `small_cnn` is carotid's own;
- the bare torchvision names below keep meaning torchvision (old commands and model files work as before);
  `tv/NAME` says torchvision explicitly;
- `timm/NAME` is timm's NAME (e.g. `timm/resnet18`, timm's ResNet-18 beside torchvision's `resnet18`);
- any other bare name is a timm name (`convnext_atto`, `vit_tiny_patch16_224`), checked against
  `timm.list_models()` once the options are parsed.
A model file records the canonical name: the bare torchvision name, or `timm/NAME`.
"""

# How frame probabilities become a person's probability (carotid.evaluation.aggregation).
AGGREGATIONS = ("mean", "median", "max")

# What a model is (--person-model): "frames" = a frame classifier whose probabilities are aggregated per person;
# the others = a person model (carotid.model.person) pooling each person's frame embeddings that way.
POOLINGS = ("attention", "mean")
PERSON_MODELS = ("frames", *POOLINGS)

# How the encoder turns its last feature map into one embedding per frame (--global-pool; recorded in a model
# file): the architecture's own average, or the maximum over the map (a small finding is not averaged away).
GLOBAL_POOLS = ("avg", "max")

# torchvision architectures: a bare name here means torchvision's model.
TORCHVISION = (
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
    "mobilenet_v3_small",
)
# The architectures built without timm: carotid's small CNN and the torchvision ones.
ARCHITECTURES = ("small_cnn", *TORCHVISION)
LIBRARIES = ("carotid", "torchvision", "timm")
TV_PREFIX, TIMM_PREFIX = "tv/", "timm/"

MODEL_HELP = (
    "Architecture: small_cnn, a torchvision name (" + ", ".join(TORCHVISION) + "; also written tv/NAME) or any "
    "timm name (1,300+, e.g. convnext_atto, efficientnetv2_rw_t, resnet18d, vit_tiny_patch16_224). "
    "A name both libraries have (resnet18, efficientnet_b0, convnext_tiny, …) means torchvision's; timm/NAME picks "
    "timm's (e.g. timm/efficientnet_b0). "
    "List timm's: python -c \"import timm; print(timm.list_models('convnext*'))\"."
)


def split_arch(name: str) -> tuple[str, str]:
    """(library, the library's own name) of a --model name; a timm name is not checked here (no timm import)."""
    if name == "small_cnn":
        return "carotid", name
    if name.startswith(TV_PREFIX):
        return "torchvision", name[len(TV_PREFIX) :]
    if name.startswith(TIMM_PREFIX):
        return "timm", name[len(TIMM_PREFIX) :]
    if name in TORCHVISION:
        return "torchvision", name
    return "timm", name


def canonical_arch(name: str) -> str:
    """The name a model file records: small_cnn, a bare torchvision name, or timm/NAME."""
    library, bare = split_arch(name)
    return TIMM_PREFIX + bare if library == "timm" else bare
