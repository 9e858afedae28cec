"""Stage 1-3: text sources -> cleaning and split -> tokenizer -> memory-mapped token shards.

Nothing here imports torch: `zhgpt data ...` and `zhgpt tokenizer ...` start fast.
"""
