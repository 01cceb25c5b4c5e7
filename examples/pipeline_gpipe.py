"""GPipe pipeline parallelism (torch.distributed.pipelining, ScheduleGPipe) for a zoo model too large for
one device, launched by torchrun, one stage per rank:

    torchrun --nproc-per-node 2 examples/pipeline_gpipe.py

Every rank builds the whole model on the CPU from the same seed (or loads the same state dict), keeps its own
stage (a run of the model's blocks) and moves only that to its device. Blocks are checkpointed (the zoo's
checkpoint= option), so each stage keeps only its blocks' inputs per micro-batch. Each layer draws its
ShakeDrop noise from (seed, layer, call), so the gradients do not depend on the number of stages.
"""

import torch
import torch.nn.functional as F

import cifarops
from cifarops import distributed as D

SEED, STEPS, BATCH, MICROBATCHES = 0, 3, 32, 4


def main():
    ctx = D.init_distributed()
    torch.manual_seed(SEED)
    model = cifarops.models.create("pyramidnet272-a200-shakedrop", depth=29, alpha=48, checkpoint="full")
    images, labels = torch.randn(BATCH * STEPS, 3, 32, 32), torch.randint(0, 10, (BATCH * STEPS,))
    run = D.gpipe(model, stage_index=ctx.rank, num_stages=ctx.world_size, n_microbatches=MICROBATCHES,
                  loss_fn=F.cross_entropy, example_microbatch=images[: BATCH // MICROBATCHES], device=ctx.device,
                  seed=SEED)
    optimizer = torch.optim.SGD(run.module.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    first, last = ctx.rank == 0, ctx.rank == ctx.world_size - 1
    for step in range(STEPS):
        x = images[step * BATCH:(step + 1) * BATCH].to(ctx.device)
        y = labels[step * BATCH:(step + 1) * BATCH].to(ctx.device)
        optimizer.zero_grad(set_to_none=True)
        losses = []
        run.schedule.step(x if first else None, target=y if last else None, losses=losses)
        optimizer.step()  # each rank updates its own stage's parameters
        if last:
            print(f"step {step + 1}: loss {torch.stack(losses).mean().item():.3f} over {len(losses)} micro-batches")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
