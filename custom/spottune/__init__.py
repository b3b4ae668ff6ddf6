"""SpotTUnet (Zakazov et al., MICCAI 2021): a U-Net whose blocks each exist frozen and fine-tuned, and a policy
network that picks, per input slice and block, which copy runs; the regulariser ``k_reg`` pays for fine-tuned ones.

Submodules: ``network`` (``SpotTUNet``), ``policy`` (the policy network), ``gumbel`` (straight-through
Gumbel-softmax), ``training`` (loss, optimizer groups), ``usage`` (how often each block's fine-tuned copy is chosen,
and its figure), ``pruning`` (keep only the fine-tuned copies the policy uses).
"""

from custom.spottune.gumbel import gumbel_noise, gumbel_softmax_st
from custom.spottune.network import (
                                     POLICY_MODES,
                                     SpotTUNet,
                                     argmax_choice,
                                     block_names,
                                     expand_source_state,
                                     split_state,
)
from custom.spottune.policy import PolicyNet
from custom.spottune.pruning import DropUnusedCopies, drop_unused_copies, unused_blocks
from custom.spottune.training import SpotTuneLoss, load_source, param_groups, prepare
from custom.spottune.usage import PolicyRecorder, PolicyUsage, plot_policy, policy_usage, volume_slices

__all__ = [
    "POLICY_MODES", "DropUnusedCopies", "PolicyNet", "PolicyRecorder", "PolicyUsage", "SpotTUNet", "SpotTuneLoss",
    "argmax_choice", "block_names", "drop_unused_copies", "expand_source_state", "gumbel_noise", "gumbel_softmax_st",
    "load_source", "param_groups", "plot_policy", "policy_usage", "prepare", "split_state", "unused_blocks",
    "volume_slices",
]
