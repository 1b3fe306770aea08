"""SIGReg under torchrun: 2 CPU processes (gloo) must reproduce the single-process value and gradients
on the concatenated batch."""

import os
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from lewm_agent.model import SIGReg

    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(123)
    full = torch.randn(3, 8 * world, 16) * 1.3 + 0.2        # the global batch, identical on every rank
    local = full[:, rank * 8 : (rank + 1) * 8].clone().requires_grad_()
    torch.manual_seed(7)                                     # directions drawn on rank 0 and broadcast
    value = SIGReg(num_proj=64)(local)
    # DDP averages gradients over ranks; emulate that on the local rows' gradient.
    value.backward()
    grad = local.grad / world
    parts = [torch.empty_like(grad) for _ in range(world)]
    dist.all_gather(parts, grad)
    if rank == 0:
        torch.save({"value": value.detach(), "grad": torch.cat(parts, dim=1)}, out)
    dist.destroy_process_group()
    """
)


@pytest.mark.distributed
def test_sigreg_two_processes_equal_single_process(tmp_path):
    import torch

    from lewm_agent.model import SIGReg

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "dist.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)

    torch.manual_seed(123)
    full = (torch.randn(3, 16, 16) * 1.3 + 0.2).requires_grad_()
    torch.manual_seed(7)
    value = SIGReg(num_proj=64)(full)
    value.backward()
    assert torch.allclose(got["value"], value.detach(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(got["grad"], full.grad, rtol=1e-4, atol=1e-7)
