"""DDAT: entropy-weighted dynamic CE/KL mixing over token KL.

alpha = base + sigmoid(H_ema - center) * (max - base) from the teacher's predictive entropy;
loss = (1 - alpha) CE + alpha KD (losses.DDAT).

Launch (GPU box; DDP / FSDP / DeepSpeed come from your accelerate config):
    accelerate launch recipes/ddat.py --config recipes/configs/ddat.yaml
Tiny CPU variant (offline, builds its own synthetic data):
    python recipes/ddat.py --config recipes/configs/ddat_tiny.yaml
Override any field:
    python recipes/ddat.py --config recipes/configs/ddat_tiny.yaml optim.max_steps=20 seed=3

The loop lives once, in `distill`; this file only builds the Recipe and runs it.
"""

from distill.recipe import main

if __name__ == "__main__":
    raise SystemExit(main(default_config="recipes/configs/ddat.yaml"))
