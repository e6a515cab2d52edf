"""polyheads' own architectures, registered in timm's model registry (seed 000 App. E.1)."""
from .convnet import ConvNet28
from .resnet_cifar import CifarResNet
