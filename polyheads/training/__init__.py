"""The training engine: data, samplers, optimiser groups, loop, checkpoints (seed 000 App. E).

    from polyheads.training import load_config, train
    result = train(load_config("configs/fashion_mnist/cosine.yaml", ["epochs=5"]))
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .compare import compare, format_tables, summarize
from .config import ConfigError, TrainConfig, apply_overrides, load_config
from .data import load_digits_images, load_fashion_mnist, load_idx_dataset, read_idx, write_idx
from .datasets import DATASETS, DataBundle, TensorImageDataset, build_data
from .engine import build_optimizer, head_loss, init_heads_from_data, pre_logits, predict, train_one_epoch
from .modules import FrozenBatchNorm, PreLogits, freeze_batch_norm
from .sampler import EpisodicBatchSampler
from .schedule import PlateauSchedule
from .splits import class_halves, class_split, stratified_split, stratified_subset
from .trainer import Trainer, TrainResult, build_model, train
