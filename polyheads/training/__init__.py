"""The training engine: data, samplers, optimiser groups, loop, checkpoints."""
from .data import load_digits_images, load_fashion_mnist, load_idx_dataset, read_idx, write_idx
