"""Frozen teachers that produce `TeacherSignals`.

- `AudioLLMTeacher`: any AudioLLM that `distill` saved or built.
- `SalmonnTeacher`: a released SALMONN checkpoint (Vicuna 7B/13B, NOTA's Llama-3.2-3B).
- `CachedTeacher`: replays signals written by `distill cache`, no teacher in memory.
"""

from teachers.audio_llm import AudioLLMTeacher
from teachers.cached import CachedTeacher
from teachers.salmonn import SalmonnTeacher

__all__ = ["AudioLLMTeacher", "CachedTeacher", "SalmonnTeacher"]
