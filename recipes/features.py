"""Feature distillation: CE + Q-Former contrastive + encoder / Q-Former hidden-state MSE.

Learnable projections bridge different widths; time is resampled when lengths differ
(losses.QFormerContrastive, losses.FeatureMSE, composed with losses.Compose).

Launch (GPU box; DDP / FSDP / DeepSpeed come from your accelerate config):
    accelerate launch recipes/features.py --config recipes/configs/features.yaml
Tiny CPU variant (offline, builds its own synthetic data):
    python recipes/features.py --config recipes/configs/features_tiny.yaml
Override any field:
    python recipes/features.py --config recipes/configs/features_tiny.yaml optim.max_steps=20 seed=3

The loop lives once, in `distill`; this file only builds the Recipe and runs it.
"""

from distill.recipe import main

if __name__ == "__main__":
    raise SystemExit(main(default_config="recipes/configs/features.yaml"))
