"""zhgpt: train a Chinese GPT from scratch and watch it learn.

The data flows one way: sources -> tokenizer -> shards -> train -> checkpoints -> report/export/serve.
Each stage is a module with a dataclass config and a ``main(cfg)`` that the CLI (zhgpt.cli) calls.
"""

__version__ = "0.1.0"
