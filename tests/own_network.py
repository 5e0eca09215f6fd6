"""A network of a customer's own code (neither timm nor torchvision), for tests/test_models.py:
``--model py:tests/own_network.py:tiny_net``. Residual blocks whose input and output shapes match are what
makes it droppable; ``forward_features`` / ``forward_head`` are what feature mimicking reads."""
import torch
import torch.nn as nn


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.stages = nn.Sequential(Residual(width), Residual(width))
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return self.stages(self.stem(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def tiny_net(num_classes: int = 10, width: int = 8) -> TinyNet:
    """The factory ``--model py:`` names: builds the network as it is used."""
    return TinyNet(num_classes, width)


def not_a_network():
    return {'weights': None}
