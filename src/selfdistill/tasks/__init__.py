"""Tasks beyond image classification (semantic segmentation building blocks; detection to come)."""
