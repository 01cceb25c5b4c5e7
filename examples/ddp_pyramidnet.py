"""Data-parallel training of a zoo model with DistributedDataParallel, launched by torchrun:

    torchrun --nproc-per-node 2 examples/ddp_pyramidnet.py            # GPUs (NCCL) or, without, the CPU (gloo)

Each rank trains on its own shard of the (here random, in-memory) data set, draws its own ShakeDrop noise from a
per-rank seed (reproducible), and DDP averages the gradients. BatchNorm normalises over each rank's shard; on
GPUs, nn.SyncBatchNorm.convert_sync_batchnorm(model) normalises over the whole batch instead.
"""

import torch
import torch.nn.functional as F

import cifarops
from cifarops import distributed as D

SEED, EPOCHS, BATCH_PER_RANK = 0, 2, 16


def main():
    ctx = D.init_distributed()
    torch.manual_seed(SEED)  # the same weights on every rank (DDP also broadcasts rank 0's at wrapping)
    images, labels = torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))
    model = cifarops.models.create("pyramidnet110-a270-shakedrop", depth=20, alpha=48, checkpoint="full")
    model = D.data_parallel(model, ctx)
    D.seed_rank(SEED, ctx.rank)  # after the weights: ShakeDrop noise differs across ranks
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    for epoch in range(EPOCHS):
        order = D.shard_indices(len(images), ctx.rank, ctx.world_size, epoch=epoch, seed=SEED)
        for start in range(0, len(order) - BATCH_PER_RANK + 1, BATCH_PER_RANK):
            index = order[start:start + BATCH_PER_RANK]
            x, y = images[index].to(ctx.device), labels[index].to(ctx.device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if ctx.rank == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.3f} (rank 0's last batch)")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
