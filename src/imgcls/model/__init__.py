"""The model: ResNet networks, pretrained weights, and the artifact (export, archive, load)."""
