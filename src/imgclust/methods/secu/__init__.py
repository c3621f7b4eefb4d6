"""SeCu (Qian, "Stable Cluster Discrimination for Deep Clustering", ICCV 2023, arXiv 2311.14310).

Losses are pure functions (:mod:`.losses`), the assignment memory / counts / duals live in
:class:`.state.SeCuState`, the network in :class:`.model.SeCuModel`, and :class:`.method.SeCu` plugs them
into the shared training loop. See ``docs/methods/secu.md`` for what follows the authors' code and what
was added.
"""

from .losses import centre_logits, centre_loss, mean_similarity, representation_loss, soft_targets
from .method import SECU_OPTIONS, SeCu, SeCuClusterModel, SeCuConfig, build_secu_net, fit_secu, secu_fit_input
from .model import SeCuModel, projection_mlp
from .resnet import RESNETS, SmallResNet, resnet18_cifar, resnet18_stl
from .state import SeCuState, assign_entropy, assign_size, dual_step, entropy_increments

__all__ = [
    "SeCu",
    "SeCuConfig",
    "SeCuClusterModel",
    "SeCuModel",
    "SeCuState",
    "SECU_OPTIONS",
    "secu_fit_input",
    "fit_secu",
    "build_secu_net",
    "projection_mlp",
    "centre_logits",
    "centre_loss",
    "mean_similarity",
    "representation_loss",
    "soft_targets",
    "assign_size",
    "assign_entropy",
    "dual_step",
    "entropy_increments",
    "SmallResNet",
    "resnet18_cifar",
    "resnet18_stl",
    "RESNETS",
]
