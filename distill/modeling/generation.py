"""Text generation for an `AudioLLM` through Hugging Face `generate`.

The prompt (BOS, instruction text, spliced audio tokens) is left-padded and handed
over as `inputs_embeds` + `attention_mask`; decoding stops at end_sym (and the
tokenizer's eos). The returned strings are cut at the first end_sym and stripped.
"""

from __future__ import annotations

import torch

from distill.contracts import AudioBatch


def generate_text(
    model,
    batch: AudioBatch,
    *,
    num_beams: int = 1,
    max_new_tokens: int = 64,
    **kw,
) -> list[str]:
    """Greedy (num_beams=1) or beam-search answers for a batch.

    Args:
        model: an `AudioLLM`.
        batch: the batch (answers are ignored).
        num_beams: beams; 1 is greedy.
        max_new_tokens: cap on generated tokens.
        **kw: other `GenerationConfig` fields (e.g. repetition_penalty, length_penalty,
            do_sample, temperature, top_p, min_new_tokens).

    Returns:
        b answer strings.
    """
    from transformers import GenerationConfig

    tok = model.tokenizer
    end_ids = model.end_ids
    stop = [end_ids[0]] if len(end_ids) == 1 else []
    if tok.eos_token_id is not None and tok.eos_token_id not in stop:
        stop.append(tok.eos_token_id)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (stop[0] if stop else 0)
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=kw.pop("do_sample", False),
        eos_token_id=stop or None,
        pad_token_id=pad,
        bos_token_id=tok.bos_token_id,
        **kw,
    )
    was_training = model.training
    model.eval()
    try:
        inp = model.prepare_inputs(batch, with_answer=False)
        out = model.llama_model.generate(
            inputs_embeds=inp["inputs_embeds"],
            attention_mask=inp["attention_mask"],
            generation_config=gen_cfg,
        )
    finally:
        model.train(was_training)
    return [_clean(tok, row.tolist(), stop, model.config.end_sym) for row in out]


def _clean(tok, ids: list[int], stop: list[int], end_sym: str) -> str:
    """Cut at the first stop id (or end_sym text), drop specials, strip spaces."""
    for i, t in enumerate(ids):
        if t in stop:
            ids = ids[:i]
            break
    text = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return text.split(end_sym)[0].strip()


@torch.no_grad()
def prefill_and_step(model, batch: AudioBatch):
    """One prefill and one cached decode step (the field's TTFT/TPOT protocol).

    Returns:
        (prefill logits [b, v] of the last position, next-step logits [b, v]).
    """
    inp = model.prepare_inputs(batch, with_answer=False)
    att = inp["attention_mask"]
    out = model.llama_model(inputs_embeds=inp["inputs_embeds"], attention_mask=att, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # [b, 1]
    att = torch.cat([att, att.new_ones(att.shape[0], 1)], dim=1)
    step = model.llama_model(
        input_ids=nxt, past_key_values=out.past_key_values, attention_mask=att, use_cache=True
    )
    return out.logits[:, -1], step.logits[:, -1]
