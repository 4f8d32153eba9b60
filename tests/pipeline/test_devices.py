"""Device settings around training (pipeline.devices)."""

from __future__ import annotations

import torch

from pipeline.devices import deterministic_cuda


def test_deterministic_cuda_turns_off_cudnn_attention_and_restores_every_flag() -> None:
    # The flags are process-wide switches torch keeps without a GPU, so this runs anywhere;
    # whether the kernels are then deterministic is checked by the same-seed tests on a device.
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cuda.cudnn_sdp_enabled())
    torch.backends.cudnn.benchmark = True
    try:
        with deterministic_cuda(torch.device("cuda")):
            assert torch.are_deterministic_algorithms_enabled()
            assert not torch.backends.cudnn.benchmark
            assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cudnn.benchmark
        assert torch.backends.cuda.cudnn_sdp_enabled() == before[2]
        assert torch.are_deterministic_algorithms_enabled() == before[0]
        with deterministic_cuda(torch.device("cpu")):  # nothing to pin on the CPU: flags untouched
            assert torch.backends.cudnn.benchmark and torch.backends.cuda.cudnn_sdp_enabled() == before[2]
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
        torch.backends.cuda.enable_cudnn_sdp(before[2])
