"""The RVC v2 training engine: model, data, losses, the training loop, checkpoints and export.

The split follows VITS/RVC (``model/``, ``mel``, ``losses``, ``data``) so people who know RVC find their
way; ``loop`` is one readable training loop that drives any registered optimizer through its protocol.
"""
