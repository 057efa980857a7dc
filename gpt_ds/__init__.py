"""gpt-ds: train GPT-style language models from scratch with DeepSpeed.

The library behind the entry points in launch/: the model, data loading, the training loop,
checkpoints and generation. See README.md for the flow from corpus to demo.
"""

__version__ = "0.1.0"
