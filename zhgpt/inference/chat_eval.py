"""Answer accuracy of a chat model, measured the way its users will run it: through transformers.

The model folder (``RUN/final`` of `zhgpt sft`) is loaded with ``AutoModelForCausalLM`` and
``AutoTokenizer``; each held-out question is formatted with ``apply_chat_template`` (the Jinja template
stored with the tokenizer), answered greedily by ``generate`` (which stops at ``<|im_end|>`` from
generation_config.json) and compared with the reference answer, exactly after stripping whitespace.
Text is cleaned as zhgpt cleans training text (NFKC etc.), so a question reads as the model was taught.
Questions whose prompt does not fit the context are counted, not scored.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from zhgpt.data.chat import Conversation
from zhgpt.data.clean import normalize


@torch.inference_mode()
def hf_answer_accuracy(model_dir, convs: list[Conversation], max_new_tokens: int = 8, limit: int = 0) -> dict:
    """{"accuracy", "n", "right", "too_long", "seconds", "examples"} of greedy answers to ``convs`` (each
    ending in the reference assistant answer) by the Hugging Face model in ``model_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.process_time()
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    context = model.config.max_position_embeddings if hasattr(model.config, "max_position_embeddings") \
        else model.config.n_positions
    right = n = too_long = 0
    examples = []
    for conv in convs[:limit] if limit else convs:
        *turns, reference = [{"role": m.role, "content": normalize(m.content)} for m in conv.messages]
        ids = tok.apply_chat_template(turns, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        prompt = ids["input_ids"]
        if prompt.shape[1] + max_new_tokens > context:
            too_long += 1
            continue
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=model.generation_config.pad_token_id)
        answer = tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True).strip()
        right += answer == reference["content"].strip()
        n += 1
        if len(examples) < 5:
            examples.append({"question": turns[-1]["content"], "reference": reference["content"], "answer": answer})
    return {"accuracy": right / max(n, 1), "n": n, "right": right, "too_long": too_long,
            "cpu_seconds": round(time.process_time() - t0, 1), "examples": examples, "model": str(Path(model_dir))}
