"""MultiLevelOT: vocabulary-agnostic cross-tokenizer distillation (Cui et al., AAAI 2025).

Token-level L1 + log term on per-sequence top-k sorted probabilities plus sequence-level
Sinkhorn OT on every batch item (losses.MultiLevelOT).

Launch (GPU box; DDP / FSDP / DeepSpeed come from your accelerate config):
    accelerate launch recipes/multilevel_ot.py --config recipes/configs/multilevel_ot.yaml
Tiny CPU variant (offline, builds its own synthetic data):
    python recipes/multilevel_ot.py --config recipes/configs/multilevel_ot_tiny.yaml
Override any field:
    python recipes/multilevel_ot.py --config recipes/configs/multilevel_ot_tiny.yaml optim.max_steps=20 seed=3

The loop lives once, in `distill`; this file only builds the Recipe and runs it.
"""

from distill.recipe import main

if __name__ == "__main__":
    raise SystemExit(main(default_config="recipes/configs/multilevel_ot.yaml"))
