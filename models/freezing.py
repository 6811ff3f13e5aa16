"""Freezing the feature layers of a network (`features`, and an MLP's `numeric_embedding`) for fine-tuning: the head
trains alone, and frozen BatchNorm layers keep their statistics."""
from torch import nn


def feature_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The parameters of the layers that fine-tuning freezes: everything but the head."""
    network = getattr(network, "module", network)  # DistributedDataParallel
    parts = [getattr(network, name, None) for name in ("features", "numeric_embedding")]
    return [p for part in parts if part is not None for p in part.parameters()]


def set_features_trainable(network: nn.Module, trainable: bool) -> None:
    for parameter in feature_parameters(network):
        parameter.requires_grad_(trainable)
    if network.training:  # a frozen BatchNorm goes to eval mode now, an unfrozen one back to train mode
        network.train()


class FrozenNormsStayInEval:
    """Mixin for an nn.Module: train() leaves BatchNorm layers whose parameters are all frozen in eval mode, so that
    training neither updates their running statistics nor normalises with batch statistics: a frozen pretrained
    layer computes what it did when it was trained."""

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.modules() if mode else ():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                parameters = list(module.parameters(recurse=False))
                if parameters and not any(p.requires_grad for p in parameters):
                    module.eval()
        return self
