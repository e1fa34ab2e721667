"""Session-wide test settings: offline, and tiny tokenizers trained into a temp dir."""

import os
import tempfile


def pytest_configure(config):
    # A test never touches the network: make any accidental hub access fail fast.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The tiny presets train their tokenizers once per session, here (not in ~/.cache).
    os.environ.setdefault("DISTILL_TINY_TOKENIZER_DIR", tempfile.mkdtemp(prefix="distill-tok-"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
