"""The training engine: data, samplers, optimiser groups, loop, checkpoints."""
from .data import load_digits_images, load_fashion_mnist, load_idx_dataset, read_idx, write_idx
from .engine import build_optimizer, head_loss, init_heads_from_data, pre_logits, predict, train_one_epoch
