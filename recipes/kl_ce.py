"""Token KL + CE: forward KL at temperature T (times T^2) plus the student CE.

Works across different tokenizers through the shared vocabulary with character-offset
alignment, or a learned vocabulary bridge (losses.TokenKL).

Launch (GPU box; DDP / FSDP / DeepSpeed come from your accelerate config):
    accelerate launch recipes/kl_ce.py --config recipes/configs/kl_ce.yaml
Tiny CPU variant (offline, builds its own synthetic data):
    python recipes/kl_ce.py --config recipes/configs/kl_ce_tiny.yaml
Override any field:
    python recipes/kl_ce.py --config recipes/configs/kl_ce_tiny.yaml optim.max_steps=20 seed=3

The loop lives once, in `distill`; this file only builds the Recipe and runs it.
"""

from distill.recipe import main

if __name__ == "__main__":
    raise SystemExit(main(default_config="recipes/configs/kl_ce.yaml"))
