"""Train a small classifier on scikit-learn's digits with DistributedDataParallel on CPU.

Started by torchrun, once per process: torchrun sets RANK, WORLD_SIZE and the rendezvous
variables. Every rank trains on its own shard of the data; DDP averages the gradients over
the gloo backend, so all ranks must end with the same weights. Rank 0 prints the loss of
each epoch (averaged over all ranks), then checks the held-out accuracy and that the ranks
stayed in sync, and the script exits 1 when either check fails.

The digits (1,797 8x8 images) ship inside the scikit-learn wheel: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

SEED = 0


def main() -> int:
    """Train, report and check; return the process exit code."""
    args = _parse_args()
    # Each node may share its cores with other ranks (two nodes on one machine locally):
    # one thread per rank keeps them from fighting over the cores.
    torch.set_num_threads(1)
    dist.init_process_group(backend="gloo", timeout=timedelta(seconds=args.timeout))
    try:
        return _run(args)
    finally:
        dist.destroy_process_group()


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--min-accuracy", type=float, default=0.9)
    parser.add_argument("--timeout", type=int, default=300, help="seconds to wait for peers")
    return parser.parse_args()


def _run(args: argparse.Namespace) -> int:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    train_set, test_x, test_y = _load_data()

    torch.manual_seed(SEED)
    model = DistributedDataParallel(_make_model())
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, seed=SEED)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    node = os.environ.get("DSTACK_NODE_RANK", "?")
    print(f"rank {rank}/{world_size} on node {node}: {len(sampler)} training images", flush=True)

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        loss = _train_epoch(model=model, loader=loader, optimizer=optimizer)
        if rank == 0:
            print(f"epoch {epoch:2d}/{args.epochs}  loss {loss:.4f}", flush=True)

    in_sync = _weights_in_sync(model.module)
    if rank != 0:
        return 0 if in_sync else 1
    return _report(model=model.module, test_x=test_x, test_y=test_y, in_sync=in_sync, args=args)


def _load_data() -> tuple[TensorDataset, torch.Tensor, torch.Tensor]:
    """The digits scaled to [0, 1], split the same way on every rank (fixed seed)."""
    images, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        images / 16.0, labels, test_size=0.2, random_state=SEED, stratify=labels
    )
    train_set = TensorDataset(
        torch.tensor(train_x, dtype=torch.float32), torch.tensor(train_y, dtype=torch.long)
    )
    return (
        train_set,
        torch.tensor(test_x, dtype=torch.float32),
        torch.tensor(test_y, dtype=torch.long),
    )


def _make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _train_epoch(
    *, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer
) -> float:
    """One pass over this rank's shard; returns the mean loss over all ranks."""
    model.train()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    totals = torch.zeros(2)
    for batch_x, batch_y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(batch_x), batch_y)
        # DDP averages gradients over ranks; scale the summed loss back to a batch mean.
        (loss / len(batch_y)).backward()
        optimizer.step()
        totals += torch.tensor([loss.item(), len(batch_y)])

    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return (totals[0] / totals[1]).item()


def _weights_in_sync(model: nn.Module) -> bool:
    """True when every rank holds exactly the weights that rank 0 holds."""
    mine = torch.cat([param.detach().flatten() for param in model.parameters()])
    rank0 = mine.clone()
    dist.broadcast(rank0, src=0)
    differs = torch.tensor([0.0 if torch.equal(mine, rank0) else 1.0])
    dist.all_reduce(differs, op=dist.ReduceOp.SUM)
    return differs.item() == 0.0


def _report(
    *,
    model: nn.Module,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    in_sync: bool,
    args: argparse.Namespace,
) -> int:
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(dim=1) == test_y).float().mean().item()

    good = accuracy >= args.min_accuracy and in_sync
    verdict = "OK" if good else "FAILED"
    print(
        f"check: accuracy {accuracy:.3f} on {len(test_y)} held-out images "
        f"(need {args.min_accuracy:.2f}), weights identical on all ranks: {in_sync}: {verdict}",
        flush=True,
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
