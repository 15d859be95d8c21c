"""Attention kernels used by the token-mixer blocks: portable PyTorch paths, and faster ones
(FlexAttention) where the device supports them, each checked equal to the portable path."""
