"""Training the detector: samples, augmentation, head targets and the training loop."""
