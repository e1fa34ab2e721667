"""Task instructions, as SALMONN's test prompt file words them.

The prompts are copied exactly from REFERENCE.md (bytedance/SALMONN test prompts),
including the typo "what your hear" in `audiocaption_v2`: released teachers were
trained and evaluated with that exact string, so fixing it would shift their inputs.
"""

from __future__ import annotations

from distill.errors import DistillError

TASK_PROMPTS: dict[str, str] = {
    "asr": "Recognize the speech and give me the transcription.",
    "audiocaption": "Please describe the audio.",
    "audiocaption_v2": "Please write down what your hear in the audio.",
}

# SALMONN's dataset falls back to ASR when an annotation has no "task".
DEFAULT_TASK = "asr"


class UnknownTaskError(DistillError, KeyError):
    """A task has no known prompt and the item gave none of its own."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def prompt_for(task: str, item_q: str | None = None) -> str:
    """The instruction for one item.

    Args:
        task: task name, e.g. "asr" or "audiocaption_v2".
        item_q: the item's own "Q" field; when non-empty it overrides the task prompt,
            as in SALMONN's dataset.

    Returns:
        The instruction text placed after the audio tokens.

    Raises:
        UnknownTaskError: `task` is not in `TASK_PROMPTS` and `item_q` is empty.
    """
    if item_q:
        return item_q
    try:
        return TASK_PROMPTS[task]
    except KeyError:
        raise UnknownTaskError(
            f"no prompt for task {task!r}; known tasks: {sorted(TASK_PROMPTS)} "
            "(or give the item a 'Q' field)"
        ) from None
