"""The optimizers this project writes: one module per algorithm or close family.

Each module holds a small ``torch.optim.Optimizer`` subclass (argument checks, state) and one
multi-tensor update function with the algorithm's math, readable top to bottom against the paper.
Shared pieces live in :mod:`rvc_optim.optim._foreach`; the compiled path in :mod:`rvc_optim.optim._compile`.
"""
