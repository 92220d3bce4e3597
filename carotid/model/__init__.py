"""Models: the architecture registry (`registry`) and the model-file format (`file`).

The architecture names live here, free of torch, so option parsing can list them without importing it.
"""

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
