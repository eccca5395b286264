"""A tiny upstream: log energy and zero-crossing rate of 25 ms frames every 10 ms, in 4 sub-bands."""
from __future__ import annotations

import torch

from ser_plugins import Upstream, UpstreamOutput


class FrameEnergyUpstream(Upstream):
    """Per-frame log energy of ``bands`` equal slices of the frame plus its zero-crossing rate."""

    def __init__(self, bands: int = 4, win: int = 400, hop: int = 160) -> None:
        super().__init__()
        self.sample_rate = 16000
        self.hop_length = hop
        self.win = win
        self.bands = bands
        self.min_samples = win
        self.hidden_sizes = [bands + 1]

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        return torch.clamp((wav_lengths - self.win) // self.hop_length + 1, min=1)

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> UpstreamOutput:
        if wavs.shape[1] < self.win:
            wavs = torch.nn.functional.pad(wavs, (0, self.win - wavs.shape[1]))
        frames = wavs.unfold(1, self.win, self.hop_length)  # [B, T, win]
        parts = frames.reshape(*frames.shape[:2], self.bands, -1)
        energy = torch.log(parts.pow(2).mean(-1) + 1e-8)
        zcr = (frames[..., 1:].sign() != frames[..., :-1].sign()).float().mean(-1, keepdim=True)
        feats = torch.cat([energy, zcr], dim=-1)
        lengths = self.frame_lengths(wav_lengths)
        # built on the input's device: the upstream runs on the GPU whenever the input is there
        mask = torch.arange(feats.shape[1], device=feats.device).unsqueeze(0) < lengths.unsqueeze(1)
        return UpstreamOutput([feats * mask.unsqueeze(-1)], lengths)
