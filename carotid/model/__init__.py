"""Models: the architecture registry (`registry`) and the model-file format (`file`).

The architecture names and the ways frame probabilities become a person's (both recorded in a model file)
live here, free of torch, so option parsing can list them without importing it.
"""

# How frame probabilities become a person's probability (carotid.evaluation.aggregation).
AGGREGATIONS = ("mean", "median", "max")

ARCHITECTURES = (
    "small_cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
    "mobilenet_v3_small",
)
