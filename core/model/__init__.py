"""The base CNN: the network and its checkpoints, base training, augmentation, the digit data sets."""
