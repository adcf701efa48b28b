"""Data: images into batches (loading, augmentation, normalisation) and image decoding."""
