"""Data for the PyTorch side: torch tensors from the core's preprocessing, augmentation, data sets."""
