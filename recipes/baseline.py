"""CE-only baseline: the student trained on the answers alone, no teacher.

The fair reference for every distillation recipe: it gets the same data, steps and
non-distillation aids, and only the teacher's signals are missing.

Launch (GPU box; DDP / FSDP / DeepSpeed come from your accelerate config):
    accelerate launch recipes/baseline.py --config recipes/configs/baseline.yaml
Tiny CPU variant (offline, builds its own synthetic data):
    python recipes/baseline.py --config recipes/configs/baseline_tiny.yaml
Override any field:
    python recipes/baseline.py --config recipes/configs/baseline_tiny.yaml optim.max_steps=20 seed=3

The loop lives once, in `distill`; this file only builds the Recipe and runs it.
"""

from distill.recipe import main

if __name__ == "__main__":
    raise SystemExit(main(default_config="recipes/configs/baseline.yaml"))
