"""The catalog: one record per optimizer, as data.

``RECORDS`` holds the 43 optimizers in the order of the guide's table, with the guide's star rating,
category and "best for" label. Everything else in a record is ours: the paper (checked against the
paper itself, so it sometimes differs from the guide), a description of the algorithm, when it is
worth trying on an RVC voice model, what state it keeps, the settings :func:`rvc_optim.create_optimizer`
fills in for RVC-scale training, the protocol a trainer must follow, and short corrections where the
guide states something that is not so.

``GOALS`` backs ``rvc-optim recommend``: for each thing a user may want (a safe default, no learning
rate to tune, less memory...), which optimizers to try first and why.

Recommended settings are starting points at RVC scale (batch 4-32, lr schedules stepped per epoch,
generator and discriminator trained as a GAN), not tuned results. Nothing here is forced: every value
can be overridden in ``create_optimizer(name, params, **kwargs)``, and the classes themselves keep
their authors' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rvc_optim.records import CurvatureRefresh, OptimizerInfo, Paper, ParamRouting, Protocol, RunLength, memory_floor
from rvc_optim.records import attach_measured_ratings

__all__ = ["GOALS", "Goal", "RECORDS"]


@dataclass(frozen=True)
class Goal:
    """A reason to pick an optimizer, for ``rvc-optim recommend``: ``names`` in order of preference."""

    key: str
    title: str
    names: tuple[str, ...]
    reason: str


GOALS: tuple[Goal, ...] = (
    Goal(
        key="default",
        title="A safe default",
        names=("AdamW",),
        reason=(
            "AdamW is what RVC itself trains with, so every pretrained generator and discriminator was "
            "tuned around it. Keep RVC's own settings: lr 1e-4, betas (0.8, 0.99), eps 1e-9, weight decay "
            "0.01 and an exponential decay of 0.999875 per epoch. The guide's advice of lr 1e-3 is ten "
            "times RVC's value, while the pretrained models were trained and are fine-tuned at 1e-4."
        ),
    ),
    Goal(
        key="drop-in",
        title="A drop-in alternative to AdamW",
        names=("ScheduleFreeAdamW", "NAdam"),
        reason=(
            "NAdam takes exactly AdamW's arguments (with decoupled_weight_decay=True) and only changes how "
            "momentum enters the step, so it is the least risky swap. ScheduleFreeAdamW replaces the LR "
            "schedule rather than the update, and is not quite drop-in: the trainer must call "
            "optimizer.train() and optimizer.eval(), apply no scheduler, and give it a warm-up."
        ),
    ),
    Goal(
        key="fastest",
        title="Faster convergence on large models (experimental)",
        names=("Sophia", "Muon"),
        reason=(
            "Both were shown to beat AdamW on language-model (and, for Muon, small image-model) training, "
            "not on GAN vocoders, so treat them as experiments. Sophia needs a curvature refresh every "
            "few steps (an extra backward pass); Muon orthogonalises the momentum of 2-D and larger "
            "weights and hands embeddings, biases and gains to AdamW, which needs parameter names."
        ),
    ),
    Goal(
        key="no-lr-tuning",
        title="No learning rate to tune",
        names=("Prodigy", "DAdaptAdam", "ScheduleFreeAdamW", "ScheduleFreeAdam", "ScheduleFreeSGD"),
        reason=(
            "Prodigy and DAdaptAdam estimate the step size themselves: leave lr at 1.0, which is a "
            "multiplier of their estimate, and use one instance per network. The schedule-free family "
            "removes the schedule, not the learning rate: it still wants a sensible lr and a warm-up, "
            "but nothing has to be decided about decay or run length."
        ),
    ),
    Goal(
        key="low-memory",
        title="Less optimizer memory",
        names=("Lion", "AdaFactor"),
        reason=(
            "Lion keeps one state tensor per parameter where AdamW keeps two, so its optimizer state is "
            "half of AdamW's; the guide's '50% less' is about that state, not the whole training run. "
            "AdaFactor stores row and column statistics instead of a full second moment; on RVC's "
            "convolution kernels it factors only the last two dimensions, so the saving is smaller than "
            "on plain matrices."
        ),
    ),
    Goal(
        key="large-batch",
        title="Very large batches",
        names=("LAMB", "LARS"),
        reason=(
            "Both rescale each layer's step by the ratio of its weight norm to its update norm, which "
            "keeps large-batch training stable where a single global lr would not. At RVC's usual batch "
            "sizes (4-32) they bring little, and LARS needs a learning rate near 1.0, far from AdamW's."
        ),
    ),
)


# --- RVC's own settings -----------------------------------------------------------------------------
# RVC trains both networks with torch.optim.AdamW(lr=1e-4, betas=(0.8, 0.99), eps=1e-9) and torch's
# default weight decay 0.01, stepping ExponentialLR(gamma=0.999875) once per epoch.
RVC_LR = 1e-4
RVC_BETAS = (0.8, 0.99)
RVC_EPS = 1e-9
RVC_WEIGHT_DECAY = 0.01
RVC_ADAMW = {"lr": RVC_LR, "betas": RVC_BETAS, "eps": RVC_EPS, "weight_decay": RVC_WEIGHT_DECAY}
# The same without weight decay, for classes whose weight_decay is an L2 term added to the gradient.
RVC_ADAM = {"lr": RVC_LR, "betas": RVC_BETAS, "eps": RVC_EPS}

# A schedule-free run replaces the schedule with a warm-up of this many steps.
SF_WARMUP_STEPS = 1000

# --- reasons shared by several records ---------------------------------------------------------------
FUSED_CORRECTION = (
    "torch ships fused kernels (CUDA and CPU) for Adam, AdamW, SGD and Adagrad, not only for AdamW"
)

# --- papers shared by several records ----------------------------------------------------------------
ADAM_PAPER = Paper("Adam: A Method for Stochastic Optimization", "Kingma, Ba", 2014, "1412.6980")
SCHEDULE_FREE_PAPER = Paper("The Road Less Scheduled", "Defazio et al.", 2024, "2405.15682")
D_ADAPTATION_PAPER = Paper("Learning-Rate-Free Learning by D-Adaptation", "Defazio, Mishchenko", 2023, "2301.07733")
ADABELIEF_PAPER = Paper(
    "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients", "Zhuang et al.", 2020, "2010.07468"
)

# --- protocols shared by several records -------------------------------------------------------------
SCHEDULE_FREE_PROTOCOL = Protocol(owns_schedule=True, train_eval=True)
PRODIGY_SYNC = (
    "d: the global sums that decide the step size are reduced on the device and d stays there "
    "(the step that creates state reads once which parameters are all zero)"
)
D_ADAPT_SYNC = (
    "d: the global sums that decide the step size are reduced on the device and d stays there; the "
    "references' early return (every gradient so far zero) is a torch.where, not a branch"
)
TORCH_FUSED_SYNC = "torch's fused kernel (create_optimizer's choice on CUDA) reads nothing back"
TORCH_FOREACH_SYNC = "torch's foreach path keeps the step counters on the CPU, where reading them is no sync"


def _torch(name: str) -> str:
    return f"torch.optim:{name}"


def _ours(module: str, name: str) -> str:
    return f"rvc_optim.optim.{module}:{name}"


RECORDS: tuple[OptimizerInfo, ...] = (
    OptimizerInfo(
        name="AdamW",
        class_path=_torch("AdamW"),
        source="torch",
        rating=5.0,
        category="PyTorch Built-in",
        best_for="General-purpose, most reliable",
        paper=Paper("Decoupled Weight Decay Regularization", "Loshchilov, Hutter", 2017, "1711.05101"),
        description=(
            "Adam with the weight decay taken out of the gradient: each step first shrinks the weights "
            "by lr * weight_decay, then applies the usual bias-corrected ratio of the first moment to "
            "the square root of the second. Because the decay no longer passes through the adaptive "
            "denominator, every weight is decayed at the same rate, which is what Adam's L2 term fails "
            "to do. It keeps two moving averages per parameter."
        ),
        when_to_use=(
            "The default, and what RVC itself uses: its pretrained models were trained with it, so it is "
            "the reference every other choice is measured against. Keep RVC's settings unless you have "
            "a reason to change them."
        ),
        state="exp_avg, exp_avg_sq: 2x params (a third with amsgrad)",
        floor_bytes_per_param=memory_floor(2),
        recommended=RVC_ADAMW,
        aliases=("torch-adamw",),
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(
            FUSED_CORRECTION,
            "RVC trains with lr 1e-4, not the guide's 1e-3 (its 1e-4..1e-3 range tops out ten times above RVC)",
            "decoupled weight decay is not L2 regularisation: for Adam the two differ, which is the paper's point",
        ),
        protocol=Protocol(host_sync_reason=TORCH_FUSED_SYNC),
    ),
    OptimizerInfo(
        name="ScheduleFreeAdamW",
        class_path=_ours("schedule_free", "ScheduleFreeAdamW"),
        source="rvc_optim",
        rating=5.0,
        category="Schedule-Free",
        best_for="No LR schedule needed",
        paper=SCHEDULE_FREE_PAPER,
        description=(
            "Replaces the learning-rate schedule by averaging. A base sequence z takes plain AdamW-style "
            "steps, x is a running weighted average of z, and the gradient is evaluated at y, a point "
            "between the two set by beta1. There is no first-moment buffer: beta1 is the interpolation "
            "weight, and only z and the second moment are stored. The model weights hold y while "
            "training and x for evaluation, so the optimizer must be switched between the two."
        ),
        when_to_use=(
            "When you would rather not pick a decay schedule or a run length. Use a learning rate a few "
            "times AdamW's with a warm-up, no scheduler, and call train()/eval() on each network's "
            "optimizer; its benefit on RVC's GAN training has not been measured here."
        ),
        state="z, exp_avg_sq: 2x params (no first moment)",
        floor_bytes_per_param=memory_floor(2),
        recommended={
            "lr": 5e-4,
            "betas": RVC_BETAS,
            "eps": RVC_EPS,
            "weight_decay": RVC_WEIGHT_DECAY,
            "warmup_steps": SF_WARMUP_STEPS,
        },
        protocol=SCHEDULE_FREE_PROTOCOL,
        aliases=("sf-adamw", "adamw-schedulefree"),
        test_settings={"lr": 1e-2, "warmup_steps": 5},
        test_settings_reason="a 1000-step warm-up would leave 50 steps at a few percent of the learning rate",
        corrections=(
            "the paper is 'The Road Less Scheduled' (Defazio et al., 2024)",
            "nothing adapts the learning rate from the distance between z and y: y is where the gradient is "
            "taken, z takes the steps and x averages z",
            "there is no built-in warm-up: warmup_steps defaults to 0 and must be set",
            "not a drop-in replacement: the trainer must call optimizer.train() and optimizer.eval()",
        ),
    ),
    OptimizerInfo(
        name="Muon",
        class_path=_ours("muon", "Muon"),
        source="rvc_optim",
        rating=5.0,
        category="Second-Order",
        best_for="Large models, fast convergence",
        paper=Paper(
            "Muon: An optimizer for hidden layers in neural networks",
            "Jordan et al.",
            2024,
            venue="blog post, kellerjordan.github.io/posts/muon",
        ),
        description=(
            "Momentum SGD for hidden weight matrices, with the step replaced by an orthogonalised one: the "
            "Nesterov momentum of each weight, read as an [out, in*k] matrix for conv kernels, is normalised "
            "and put through five quintic Newton-Schulz iterations, which move all of its singular values "
            "close to one. Every direction of the matrix then takes a step of about the same size. Tensors "
            "that are not hidden matrices (biases, gains, weight-norm magnitudes, embeddings, the input "
            "layers on a raw signal and the output heads) are trained by an AdamW inside the same optimizer."
        ),
        when_to_use=(
            "An experiment for RVC: the method comes from transformer and small-CNN training, not vocoders. "
            "Its lr is a step in spectral norm: start at 0.02 with momentum 0.95 for the matrices and the "
            "authors' AdamW settings (adamw_lr 3e-4, betas (0.9, 0.95)) for the rest; RVC's lr 1e-4 would "
            "barely move the matrices. Hand it the model (or named_parameters()) so the routing can use "
            "names; check optimizer.param_roles() and mark tensors with muon_patterns / adamw_patterns."
        ),
        state=(
            "momentum_buffer: 1x for the Newton-Schulz weights; exp_avg, exp_avg_sq: 2x and a Python int step "
            "for the AdamW tensors"
        ),
        floor_bytes_per_param=memory_floor(1),
        recommended={"lr": 0.02, "momentum": 0.95, "weight_decay": 0.0},
        protocol=Protocol(
            param_routing=ParamRouting(
                rule=(
                    "tensors of 2+ dimensions go to Newton-Schulz, conv kernels [out, in, k...] as one "
                    "[out, in*k] matrix; to AdamW: 1-D tensors, biases, one-per-channel gains and weight-norm "
                    "magnitudes ([C, 1, 1], weight_g, original0), embeddings (nn.Embedding, names with an "
                    "'emb...' part), output heads (one output channel) and convs on a one-channel signal "
                    "([C, 1, k]); muon_patterns, adamw_patterns or a group's use_muon override it, and "
                    "optimizer.param_roles() shows the result"
                ),
                wants_names=True,
            )
        ),
        aliases=("muon-adamw", "muonwithauxadam"),
        corrections=(
            "Muon is a first-order method: orthogonalising the momentum uses no curvature information, "
            "so 'Second-Order' describes it only loosely",
            "the source is Keller Jordan's 2024 blog post 'Muon: An optimizer for hidden layers in neural "
            "networks', not a 2025 paper called 'Momentum Orthogonalized Gradient Descent'; the scaled-up "
            "follow-up is Liu et al., 2025, arXiv:2502.16982",
            "it orthogonalises the momentum matrix of each weight, not a momentum vector; biases, gains and "
            "embeddings need AdamW, which this class runs for them",
            "a Newton-Schulz iteration that drops the c*A*A term (as the guide's code did) is not Muon and "
            "diverges on RVC's shapes",
        ),
    ),
    OptimizerInfo(
        name="Sophia",
        class_path=_ours("sophia", "Sophia"),
        source="rvc_optim",
        rating=5.0,
        category="Second-Order",
        best_for="Large-scale training",
        paper=Paper(
            "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model Pre-training",
            "Liu et al.",
            2023,
            "2305.14342",
        ),
        description=(
            "The authors' SophiaG. It keeps a momentum of the gradient and a slow moving average of a "
            "diagonal curvature estimate, and moves each coordinate by the momentum divided by rho x bs x "
            "curvature, clipped so that no coordinate moves more than lr. The curvature average is only "
            "updated every 10 steps; here the engine feeds it Hutchinson estimates (a random +-1 probe "
            "times a Hessian-vector product from a second backward pass), and update_hessian() without "
            "arguments keeps the authors' squared-gradient estimate. Where the curvature is unknown or "
            "tiny the step is a sign step of size lr."
        ),
        when_to_use=(
            "An experiment for RVC: built for language-model pre-training, never shown on GAN vocoders. "
            "Each refresh (every 10 steps, for G and D on their own losses) costs a backward pass that "
            "keeps its graph, so roughly one extra step in ten. Start from lr 1e-4, betas (0.8, 0.99), "
            "rho 0.04 with bs 1 (the losses are batch means, so their curvature is already per sample). "
            "The authors aim for 10-50% of coordinates unclipped; on the tiny demo after 30 steps "
            "(3 refreshes) 11% of the generator's and 1.5% of the discriminator's were: raise rho if "
            "nearly every step stays a sign step."
        ),
        state="exp_avg, hessian: 2x params (plus a step count)",
        floor_bytes_per_param=memory_floor(1, 1),
        recommended={"lr": RVC_LR, "betas": RVC_BETAS, "rho": 0.04, "bs": 1, "weight_decay": RVC_WEIGHT_DECAY},
        protocol=Protocol(
            curvature_refresh=CurvatureRefresh(
                every=10,
                method="refresh_curvature",
                needs_create_graph=True,
                how="a Hutchinson estimate z*(Hz) from the kept graph of that step's backward, folded into "
                "the curvature average; the gradients are detached afterwards",
            )
        ),
        aliases=("sophiag",),
        test_settings={"lr": 3e-3},
        test_settings_reason="steps are at most lr per coordinate, so 1e-4 barely moves in 50 steps",
        corrections=(
            "the clipping is a deterministic per-coordinate clip of the preconditioned step, not a "
            "'stochastic clipping'",
            "the Hessian estimate costs an extra backward pass every k steps (k=10 by default)",
            "the guide's version had no curvature estimate at all: its steps were about 1e-10 in size",
        ),
    ),
    OptimizerInfo(
        name="Lion",
        class_path=_ours("lion", "Lion"),
        source="rvc_optim",
        rating=4.5,
        category="Sign-Based",
        best_for="Memory-efficient training",
        paper=Paper("Symbolic Discovery of Optimization Algorithms", "Chen et al.", 2023, "2302.06675"),
        description=(
            "Steps by the sign of an interpolation between the momentum and the current gradient, so "
            "every coordinate moves by exactly lr (plus decoupled decay). The momentum itself is then "
            "updated with the second, slower beta. Unlike Adam it has no second moment and no eps, "
            "keeps one buffer per parameter, and its uniform step size calls for a smaller lr and a "
            "larger weight decay."
        ),
        when_to_use=(
            "When optimizer memory is what limits you. Start from lr 3-10x below AdamW's (about 3e-5 "
            "for RVC) with weight decay raised by the same factor."
        ),
        state="exp_avg: 1x params",
        floor_bytes_per_param=memory_floor(1),
        # lr 3.3x below RVC's and decay 3x above it keep lr * weight_decay close to AdamW's.
        recommended={"lr": 3e-5, "betas": RVC_BETAS, "weight_decay": 0.03},
        test_settings={"lr": 1e-3},
        test_settings_reason="a sign step of 3e-5 per coordinate moves the contract model too little in 50 steps",
        corrections=(
            "found by symbolic program search (evolutionary search over programs), not neural architecture search",
            "the '50% less memory' is about optimizer state (one buffer against AdamW's two), not total memory",
        ),
    ),
    OptimizerInfo(
        name="Prodigy",
        class_path=_ours("prodigy", "Prodigy"),
        source="rvc_optim",
        rating=4.5,
        category="LR-Free",
        best_for="No LR tuning needed",
        paper=Paper(
            "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
            "Mishchenko, Defazio",
            2023,
            "2306.06101",
        ),
        description=(
            "An Adam whose step size is d * lr, where d is an estimate of the distance from the initial "
            "weights to a solution. d starts tiny (d0) and only grows, driven by how well the gradients "
            "correlate with the distance already travelled from the initial point. Compared with "
            "DAdaptAdam it weights the statistics by d so the estimate grows faster. It keeps Adam's "
            "two moments plus a running gradient sum and a copy of the initial weights."
        ),
        when_to_use=(
            "When you do not want to tune the learning rate: leave lr at 1.0 and use one instance per "
            "network. With an LR scheduler or warm-up, set safeguard_warmup=True (the recommended "
            "setting does); d_coef below 1.0 is the knob if steps are too large."
        ),
        state="exp_avg, exp_avg_sq, s, p0: 4x params (s and p0 shrink with slice_p)",
        floor_bytes_per_param=memory_floor(3, 1, reduction=True),
        recommended={
            "lr": 1.0,
            "betas": RVC_BETAS,
            "eps": RVC_EPS,
            "weight_decay": RVC_WEIGHT_DECAY,
            "safeguard_warmup": True,
        },
        protocol=Protocol(
            lr_role="multiplier",
            owns_schedule=True,
            scheduler_allowed_with="safeguard_warmup=True",
            host_syncs_per_step=0,
            host_sync_reason=PRODIGY_SYNC,
            single_lr=True,
        ),
        aliases=("prodigyopt",),
        corrections=(
            "d_coef scales the estimated distance d; it is not a fraction of D0 to travel per epoch",
        ),
    ),
    OptimizerInfo(
        name="NAdam",
        class_path=_torch("NAdam"),
        source="torch",
        rating=4.5,
        category="PyTorch Built-in",
        best_for="Faster than standard Adam",
        paper=Paper("Incorporating Nesterov Momentum into Adam", "Dozat", 2016, venue="ICLR 2016 workshop"),
        description=(
            "Adam with a Nesterov-style momentum: the step mixes the bias-corrected momentum of the next "
            "step with the current gradient, so it applies part of the coming momentum now. torch's "
            "version also warms the momentum coefficient up slowly, over thousands of steps "
            "(momentum_decay). The gradient is still taken at the current weights. State is Adam's two "
            "moments plus a running product of momentum coefficients."
        ),
        when_to_use=(
            "The most conservative swap for AdamW: same arguments, same cost. Set "
            "decoupled_weight_decay=True (the recommended setting does) to keep AdamW's decay."
        ),
        state="exp_avg, exp_avg_sq: 2x params, plus a scalar mu_product",
        floor_bytes_per_param=memory_floor(2),
        recommended={**RVC_ADAMW, "decoupled_weight_decay": True},
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(
            "the gradient is not computed at a look-ahead position; the Nesterov step is folded into the update",
            "the paper is Dozat's 2016 ICLR workshop paper",
        ),
        protocol=Protocol(host_sync_reason=TORCH_FOREACH_SYNC),
    ),
    OptimizerInfo(
        name="RAdam",
        class_path=_torch("RAdam"),
        source="torch",
        rating=4.0,
        category="PyTorch Built-in",
        best_for="Warmup-free training",
        paper=Paper("On the Variance of the Adaptive Learning Rate and Beyond", "Liu et al.", 2019, "1908.03265"),
        description=(
            "Adam that multiplies its adaptive step by a rectification factor derived from how many "
            "samples the second-moment average effectively holds. While that number is too small "
            "(the first few steps) it falls back to momentum SGD without the adaptive denominator. "
            "This plays the role of a learning-rate warm-up with no extra hyper-parameter. Its state is "
            "Adam's."
        ),
        when_to_use=(
            "When a run is short enough that a warm-up would matter. With RVC's beta2 of 0.99 the "
            "fallback lasts only about six steps, so the difference from AdamW is small."
        ),
        state="exp_avg, exp_avg_sq: 2x params",
        floor_bytes_per_param=memory_floor(2),
        recommended={**RVC_ADAMW, "decoupled_weight_decay": True},
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        protocol=Protocol(host_sync_reason=TORCH_FOREACH_SYNC),
    ),
    OptimizerInfo(
        name="Adan",
        class_path=_ours("adan", "Adan"),
        source="rvc_optim",
        rating=4.0,
        category="Nesterov",
        best_for="Vision and audio tasks",
        paper=Paper(
            "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models",
            "Xie et al.",
            2022,
            "2208.06677",
        ),
        description=(
            "Adds a Nesterov momentum estimate to Adam without evaluating the gradient elsewhere: besides "
            "the gradient average it keeps an average of the difference between consecutive gradients, "
            "and the second moment tracks the square of the gradient corrected by that difference. The "
            "step combines both averages over the same denominator, and weight decay is applied as a "
            "proximal division by default. It needs three betas and keeps four buffers."
        ),
        when_to_use=(
            "Worth a try as an AdamW alternative when memory allows twice the optimizer state. It takes "
            "three betas; RVC's two-element betas do not fit."
        ),
        state="exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad: 4x params",
        floor_bytes_per_param=memory_floor(4),
        recommended={"lr": RVC_LR, "betas": (0.98, 0.92, 0.99), "eps": RVC_EPS, "weight_decay": 0.02},
        protocol=Protocol(host_syncs_per_step=0, host_sync_reason="the optional clip factor stays on the device"),
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(
            "the gradient-difference average is a Nesterov momentum estimate, not curvature information",
        ),
    ),
    OptimizerInfo(
        name="AnyPrecisionAdamW",
        class_path=_ours("any_precision_adamw", "AnyPrecisionAdamW"),
        source="rvc_optim",
        rating=4.0,
        category="Mixed-Precision",
        best_for="Bfloat16 training",
        paper=Paper("AnyPrecisionAdamW (torchdistx)", "Wright", 2022, venue="torchdistx, Meta; no paper"),
        description=(
            "AdamW whose momentum, variance and compensation buffers each have a dtype you choose. With "
            "use_kahan_summation it keeps, per parameter, the part of each update that rounding in a "
            "low-precision weight would lose, and adds it back on the next step, which makes training "
            "with bfloat16 weights viable. With float32 buffers and no Kahan summation it is AdamW "
            "(bias corrections computed in float32)."
        ),
        when_to_use=(
            "Only for training with bfloat16 weights, with use_kahan_summation=True and bfloat16 buffers. "
            "For RVC's usual fp32 or fp16-autocast training keep the variance in float32 (the recommended "
            "setting does), and plain AdamW is equivalent."
        ),
        state="exp_avg (momentum_dtype), exp_avg_sq (variance_dtype), compensation with Kahan: 2-3 buffers",
        floor_bytes_per_param=memory_floor(2),
        recommended={**RVC_ADAMW, "variance_dtype": torch.float32},
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(
            "there is no 'brain' setting: bfloat16 is only the default dtype of the variance and "
            "compensation buffers",
            "the momentum defaults to float32 and Kahan summation is off by default",
        ),
    ),
    OptimizerInfo(
        name="Ranger21",
        class_path=_ours("ranger21", "Ranger21"),
        source="rvc_optim",
        rating=4.0,
        category="Combined",
        best_for="RAdam + Lookahead synergy",
        paper=Paper("Ranger21: a synergistic deep learning optimizer", "Wright, Demeure", 2021, "2106.13731"),
        description=(
            "An Adam core with a stack of additions: adaptive gradient clipping, gradient centralisation "
            "and normalisation, positive-negative momentum, a softplus-smoothed denominator, stable "
            "weight decay divided by the global RMS of the second moments, and norm loss. It runs its "
            "own linear warm-up and a linear warm-down over the last 28% of the run, so it must be told "
            "the run length. Every five steps Lookahead pulls the weights halfway back to a slow copy, "
            "which it keeps as a fourth buffer beside the two momenta and the second moment."
        ),
        when_to_use=(
            "When you want a packaged recipe and know the run length up front (pass num_iterations). "
            "Apply no scheduler, and note that gradient centralisation zeroes the gradient of RVC's "
            "weight-norm magnitudes of shape [C, 1, 1]."
        ),
        state="grad_ma, neg_grad_ma, variance_ma, lookahead_params: 4x params",
        floor_bytes_per_param=memory_floor(4, reduction=True),
        recommended={"lr": RVC_LR, "betas": RVC_BETAS},
        protocol=Protocol(
            owns_schedule=True,
            run_length=RunLength(epochs_kwarg="num_epochs", steps_per_epoch_kwarg="num_batches_per_epoch"),
            host_syncs_per_step=0,
            host_sync_reason="the global RMS of the second moments (stable weight decay) stays on the device",
        ),
        aliases=("ranger",),
        test_settings={"lr": 1e-2, "num_epochs": 1, "num_batches_per_epoch": 50},
        test_settings_reason="the run is 50 steps, so warm-up and warm-down must fit in it, at a larger lr",
        corrections=(
            "not just RAdam + Lookahead: adaptive gradient clipping, gradient centralisation and "
            "normalisation, positive-negative momentum, stable weight decay, norm loss, linear warm-up "
            "and warm-down, softplus denominator",
            "there is no RAdam rectification in it, and it is not warm-up free: it schedules its own "
            "warm-up and warm-down from the run length",
            "Lookahead merges every 5 steps by default, not 6",
        ),
    ),
    OptimizerInfo(
        name="AdaFactor",
        class_path=_ours("adafactor", "AdaFactor"),
        source="rvc_optim",
        rating=4.0,
        category="Memory-Efficient",
        best_for="Large model training",
        paper=Paper(
            "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
            "Shazeer, Stern",
            2018,
            "1804.04235",
        ),
        description=(
            "Replaces Adam's per-element second moment of a matrix by running means of the squared "
            "gradient over its rows and over its columns, and rebuilds the full estimate as their "
            "normalised outer product. Tensors of three or four dimensions are factored over their last "
            "two, as in the transformers and fairseq code; where the last is 1 (the discriminator's [O, I, "
            "k, 1] kernels) that factorisation is exact and only the row means are kept. Its second-moment decay starts at zero and "
            "rises as 1 - t^-0.8, every update is scaled down to RMS at most 1, and by default the step "
            "is 1/sqrt(t) capped at 0.01 and multiplied by the parameter's own RMS. A first moment is "
            "optional."
        ),
        when_to_use=(
            "When optimizer memory matters more than a proven recipe. For an AdamW-like lr (1e-4) turn "
            "off the relative step and the parameter scaling, as the recommended settings do; beta1=0.8 "
            "restores RVC's momentum at the price of one full buffer."
        ),
        state=(
            "exp_avg_sq_row and exp_avg_sq_col for tensors of 2+ dims (an [out, in, k] kernel keeps "
            "out*in + out*k numbers: 1/3 of a full second moment on RVC's generator, as 1x1 convolutions "
            "gain nothing; an [O, I, k, 1] kernel keeps exp_avg_sq_row alone, 1x, since factoring a column "
            "saves nothing); exp_avg_sq 1x for 1-D tensors; exp_avg 1x with beta1; a step count"
        ),
        floor_bytes_per_param=memory_floor(1, reduction=True),
        recommended={
            "lr": RVC_LR,
            "relative_step": False,
            "scale_parameter": False,
            "warmup_init": False,
            "beta1": 0.8,
            "weight_decay": RVC_WEIGHT_DECAY,
        },
        corrections=(
            "the relative step is min(0.01, 1/sqrt(t)), set by the step count; the parameter's RMS enters "
            "as a separate scale (scale_parameter), and an explicit lr needs relative_step=False",
            "the saving is rows + cols instead of rows * cols for a matrix; for RVC's conv kernels, "
            "factored over their last two dimensions, it is a third of Adam's second moment, not m + n",
        ),
    ),
    OptimizerInfo(
        name="DAdaptAdam",
        class_path=_ours("dadapt", "DAdaptAdam"),
        source="rvc_optim",
        rating=4.0,
        category="LR-Free",
        best_for="Automatic LR from gradients",
        paper=D_ADAPTATION_PAPER,
        description=(
            "Adam whose step size is d * lr, where d is a lower bound on the distance to a solution. The "
            "bound comes from the weighted inner products between each gradient and the sum of past "
            "steps, divided by the size of that sum; d never decreases. Its estimate grows more "
            "cautiously than Prodigy's. Besides Adam's moments it keeps the running step sum."
        ),
        when_to_use=(
            "When you do not want to tune the learning rate: lr 1.0, one instance per network. Its "
            "weight decay is L2 unless decouple=True (the recommended setting sets it)."
        ),
        state="exp_avg, exp_avg_sq, s: 3x params",
        floor_bytes_per_param=memory_floor(3, reduction=True),
        recommended={
            "lr": 1.0,
            "betas": RVC_BETAS,
            "eps": RVC_EPS,
            "weight_decay": RVC_WEIGHT_DECAY,
            "decouple": True,
        },
        protocol=Protocol(
            lr_role="multiplier",
            owns_schedule=True,
            host_syncs_per_step=0,
            host_sync_reason=D_ADAPT_SYNC,
            single_lr=True,
        ),
        aliases=("dadaptation-adam",),
        corrections=(
            "the distance estimate comes from inner products of gradients with the accumulated steps, "
            "not from a sum of squared gradients",
            "its weight decay is coupled (L2) unless decouple=True",
        ),
    ),
    OptimizerInfo(
        name="Adam",
        class_path=_torch("Adam"),
        source="torch",
        rating=4.0,
        category="PyTorch Built-in",
        best_for="Classic adaptive optimizer",
        paper=ADAM_PAPER,
        description=(
            "Keeps exponential averages of the gradient and of its square, corrects both for their "
            "zero initialisation, and steps by their ratio, so each coordinate gets a step size scaled "
            "by its own gradient history. Weight decay, if any, is added to the gradient (L2) and so is "
            "scaled down on coordinates with large gradients; that is the difference from AdamW. It keeps "
            "the two averages per parameter."
        ),
        when_to_use=(
            "To reproduce results that used Adam; for new RVC runs AdamW is the same with better-behaved "
            "decay. The recommended setting has no weight decay."
        ),
        state="exp_avg, exp_avg_sq: 2x params (a third with amsgrad)",
        floor_bytes_per_param=memory_floor(2),
        recommended=RVC_ADAM,
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(FUSED_CORRECTION,),
        protocol=Protocol(host_sync_reason=TORCH_FUSED_SYNC),
    ),
    OptimizerInfo(
        name="PAdam",
        class_path=_ours("padam", "PAdam"),
        source="rvc_optim",
        rating=4.0,
        category="Partial Adaptive",
        best_for="Adam-SGD interpolation",
        paper=Paper(
            "Closing the Generalization Gap of Adaptive Gradient Methods in Training Deep Neural Networks",
            "Chen et al.",
            2018,
            "1806.06763",
        ),
        description=(
            "AMSGrad with the denominator raised to a partial power: the step divides the momentum by "
            "(sqrt(v) + eps) ** (2 * partial). partial = 1/2 is AMSGrad and smaller values move towards "
            "momentum SGD, whose step scale it then shares. By default it keeps the running maximum of "
            "the second moment as AMSGrad does."
        ),
        when_to_use=(
            "When you want something between Adam and SGD with one knob. Its step scale is SGD-like, so it "
            "needs a larger lr than AdamW (1e-3 is an untested starting guess for RVC)."
        ),
        state="exp_avg, exp_avg_sq, max_exp_avg_sq: 3x params (2x with amsgrad=False)",
        floor_bytes_per_param=memory_floor(3),
        recommended={"lr": 1e-3, "betas": RVC_BETAS, "eps": RVC_EPS},
        test_settings={"lr": 1e-2},
        test_settings_reason="the 50-step contract needs a larger step than the RVC-scale guess",
        corrections=(
            "the argument is partial, in (0, 1/2]: 1/2 gives Adam (AMSGrad) and values near 0 give "
            "momentum SGD; 1 is not Adam",
        ),
    ),
    OptimizerInfo(
        name="Apollo",
        class_path=_ours("apollo", "Apollo"),
        source="rvc_optim",
        rating=4.0,
        category="Quasi-Newton",
        best_for="L-BFGS-like convergence",
        paper=Paper(
            "Apollo: An Adaptive Parameter-wise Diagonal Quasi-Newton Method for Nonconvex Stochastic Optimization",
            "Ma",
            2020,
            "2009.13586",
        ),
        description=(
            "Keeps a diagonal curvature estimate B, updated each step from a weak secant condition on the "
            "previous update direction and the change in the bias-corrected gradient average. The step "
            "divides the gradient average by |B|, rectified from below (by 0.01, or by the gradient "
            "change with rebound='belief') so that negative or tiny curvature cannot blow it up. A linear "
            "warm-up from init_lr is built in because the first steps use an untrained B."
        ),
        when_to_use=(
            "Experimental for RVC. Its lr is about 100x AdamW's (the authors use 0.01 with a 500-step "
            "warm-up); keep the warm-up."
        ),
        state="exp_avg_grad, approx_hessian, update: 3x params",
        floor_bytes_per_param=memory_floor(3, reduction=True),
        recommended={"lr": 1e-2, "beta": 0.9, "eps": 1e-4, "warmup": 500, "init_lr": 1e-5},
        test_settings={"lr": 1e-2, "warmup": 5},
        test_settings_reason="a 500-step warm-up keeps the 50-step contract at a fraction of the learning rate",
        corrections=(
            "this is Ma's 2020 diagonal quasi-Newton method, not the 2024 memory-efficient APOLLO",
            "the curvature comes from a secant condition on the last update, not from ratios of "
            "consecutive gradients, and it is diagonal with no L-BFGS-style history",
            "the step divides the gradient average by the rectified curvature max(|B|, 0.01), never by a "
            "clamped gradient",
        ),
    ),
    OptimizerInfo(
        name="CAME",
        class_path=_ours("came", "CAME"),
        source="rvc_optim",
        rating=3.5,
        category="Unified",
        best_for="Adam+SGD benefits combined",
        paper=Paper("CAME: Confidence-guided Adaptive Memory Efficient Optimization", "Luo et al.", 2023, "2307.02047"),
        description=(
            "Builds on Adafactor's factored second moment and adds a confidence term: it tracks the "
            "squared gap between the normalised update and its momentum, also in factored form, and "
            "divides the momentum by its square root. Steps whose momentum disagrees with the current "
            "update are shrunk. Matrices keep the full momentum plus two pairs of row and column "
            "statistics; 1-D tensors keep a full second moment and get no confidence scaling."
        ),
        when_to_use=(
            "A memory-saving alternative to AdamW that keeps a momentum. It takes three betas (RVC's two "
            "plus the confidence decay) and an eps pair; lr 1e-4 is a reasonable start."
        ),
        state=(
            "exp_avg 1x; for tensors of 2+ dims two factored pairs (second moment and residual), each "
            "out*in + out*k for an [out, in, k] kernel (1/3 of a full tensor on RVC's generator), the row "
            "means alone (1x each) for an [O, I, k, 1] kernel, whose factorisation is exact; exp_avg_sq "
            "1x for 1-D tensors; a step count"
        ),
        floor_bytes_per_param=memory_floor(1, reduction=True),
        recommended={"lr": RVC_LR, "betas": (0.8, 0.99, 0.9999), "weight_decay": RVC_WEIGHT_DECAY},
        corrections=(
            "CAME tracks no gradient sign consistency: it is Adafactor with a confidence-guided, "
            "factored residual that scales the momentum",
        ),
    ),
    OptimizerInfo(
        name="NovoGrad",
        class_path=_ours("novograd", "NovoGrad"),
        source="rvc_optim",
        rating=3.5,
        category="Normalized",
        best_for="Well-conditioned gradients",
        paper=Paper(
            "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep Networks",
            "Ginsburg et al.",
            2019,
            "1905.11286",
        ),
        description=(
            "Keeps one second-moment scalar per tensor (layer): an average of the squared gradient norm. "
            "Each gradient is divided by the square root of that scalar, L2 decay is added after the "
            "normalisation, and the result feeds an ordinary momentum. Per-element memory is one buffer, "
            "as for SGD with momentum."
        ),
        when_to_use=(
            "When Adam's per-element state is too much but layer-wise scaling is wanted. Normalised "
            "gradients make the per-element step small, so it needs an lr around 1e-3 to 1e-2."
        ),
        state="exp_avg: 1x params; exp_avg_sq (and max_exp_avg_sq with amsgrad): one scalar per tensor",
        floor_bytes_per_param=memory_floor(1, reduction=True),
        recommended={"lr": 1e-3, "betas": (0.95, 0.98), "weight_decay": 1e-3},
        aliases=("nvnovograd",),
        corrections=(
            "the second moment is one scalar per layer (the average squared gradient norm), and the "
            "gradient is divided by it, not normalised by its own RMS first",
        ),
    ),
    OptimizerInfo(
        name="ScheduleFreeAdam",
        class_path=_ours("schedule_free", "ScheduleFreeAdam"),
        source="rvc_optim",
        rating=3.5,
        category="Schedule-Free",
        best_for="Adam without LR schedule",
        paper=SCHEDULE_FREE_PAPER,
        description=(
            "The schedule-free scheme of ScheduleFreeAdamW with Adam's coupled weight decay: the decay "
            "term is added to the gradient at the evaluation point y before the second moment is "
            "updated, so it is scaled by the adaptive denominator. Everything else is shared with "
            "ScheduleFreeAdamW: no schedule, an averaged x for evaluation, and train()/eval() switches. "
            "The authors publish no class for it; it is defined by that construction."
        ),
        when_to_use=(
            "When you want schedule-free training but L2-style decay, for instance to match an Adam "
            "baseline. Keep the decay small or zero; otherwise prefer ScheduleFreeAdamW."
        ),
        state="z, exp_avg_sq: 2x params",
        floor_bytes_per_param=memory_floor(2),
        recommended={"lr": 5e-4, "betas": RVC_BETAS, "eps": RVC_EPS, "warmup_steps": SF_WARMUP_STEPS},
        protocol=SCHEDULE_FREE_PROTOCOL,
        aliases=("sf-adam", "adam-schedulefree"),
        test_settings={"lr": 1e-2, "warmup_steps": 5},
        test_settings_reason="a 1000-step warm-up would leave 50 steps at a few percent of the learning rate",
        corrections=("there is no built-in warm-up: warmup_steps defaults to 0 and must be set",),
    ),
    OptimizerInfo(
        name="DAdaptAdaGrad",
        class_path=_ours("dadapt", "DAdaptAdaGrad"),
        source="rvc_optim",
        rating=3.5,
        category="LR-Free",
        best_for="Auto LR with AdaGrad",
        paper=D_ADAPTATION_PAPER,
        description=(
            "Dual averaging with AdaGrad's per-coordinate accumulated squared gradients and a step size "
            "d * lr found by D-Adaptation. The weights are recomputed each step from the initial point "
            "minus the scaled sum of all past steps; optional momentum averages the iterates rather "
            "than the gradients. State is the accumulator, the step sum and the initial weights."
        ),
        when_to_use=(
            "Rarely a good fit for RVC: AdaGrad's ever-growing accumulator slows long runs. Use lr 1.0 "
            "if you try it."
        ),
        state="alpha_k, s_k, x0: 3x params",
        floor_bytes_per_param=memory_floor(2, 1, reduction=True),
        recommended={"lr": 1.0},
        protocol=Protocol(
            lr_role="multiplier",
            owns_schedule=True,
            host_syncs_per_step=0,
            host_sync_reason=D_ADAPT_SYNC,
            single_group_hparams=("lr", "momentum"),
        ),
        aliases=("dadaptation-adagrad",),
        test_settings={"d0": 1e-3},
        test_settings_reason="from d0=1e-6 its step size does not grow enough within 50 steps",
        corrections=("its momentum averages the iterates (primal averaging); it is not heavy-ball momentum",),
    ),
    OptimizerInfo(
        name="SGD",
        class_path=_torch("SGD"),
        source="torch",
        rating=3.0,
        category="PyTorch Built-in",
        best_for="Best generalization",
        paper=Paper(
            "A Stochastic Approximation Method",
            "Robbins, Monro",
            1951,
            venue="Annals of Mathematical Statistics",
        ),
        description=(
            "Steps against the gradient, here with a heavy-ball momentum buffer that accumulates past "
            "gradients (optionally Nesterov). Every coordinate shares the same learning rate, so the "
            "scale of the lr depends on the scale of the gradients. It keeps one buffer when momentum "
            "is on and none otherwise."
        ),
        when_to_use=(
            "Rarely for RVC: GAN training with a single global step size is hard to tune. If you try it, "
            "use momentum 0.9 and an lr of 1e-3 to 1e-2."
        ),
        state="momentum_buffer: 1x params (none without momentum)",
        floor_bytes_per_param=memory_floor(1),
        recommended={"lr": 1e-3, "momentum": 0.9},
        test_settings={"lr": 0.05, "momentum": 0.9},
        test_settings_reason="the 50-step contract needs a larger step than the RVC-scale value",
        corrections=(FUSED_CORRECTION,),
        protocol=Protocol(host_sync_reason=TORCH_FUSED_SYNC),
    ),
    OptimizerInfo(
        name="RMSprop",
        class_path=_torch("RMSprop"),
        source="torch",
        rating=3.0,
        category="PyTorch Built-in",
        best_for="RL and recurrent networks",
        paper=Paper("Lecture 6e: rmsprop", "Hinton", 2012, venue="Coursera, Neural Networks for Machine Learning"),
        description=(
            "Divides each gradient by the square root of an exponential average of its squares, with "
            "no momentum by default and no bias correction. Compared with Adam it lacks the first-moment "
            "average and the correction of the zero-initialised average, so early steps are larger. The "
            "centred variant also subtracts the squared mean gradient."
        ),
        when_to_use=(
            "Little reason to prefer it over AdamW for RVC. Its default lr of 1e-2 is far too high for a "
            "GAN; use about 1e-4."
        ),
        state="square_avg: 1x params (+ grad_avg if centered, + momentum_buffer with momentum)",
        floor_bytes_per_param=memory_floor(1),
        recommended={"lr": RVC_LR, "alpha": 0.99, "eps": RVC_EPS},
        protocol=Protocol(host_sync_reason=TORCH_FOREACH_SYNC),
    ),
    OptimizerInfo(
        name="AdaBelief",
        class_path=_ours("adabelief", "AdaBelief"),
        source="rvc_optim",
        rating=3.0,
        category="Belief-Based",
        best_for="Better conditioned updates",
        paper=ADABELIEF_PAPER,
        description=(
            "Adam with the second moment replaced by the variance of the gradient around its own "
            "average, (g - m)^2, plus eps accumulated into it. Where the gradient agrees with its "
            "momentum the denominator is small and the step large; where it is noisy the step shrinks. "
            "By default it rectifies the early steps like RAdam and decouples the weight decay."
        ),
        when_to_use=(
            "A reasonable AdamW alternative; the authors recommend eps 1e-16 for GANs (RVC's 1e-9 is too "
            "large here). The first few steps are SGD-like; set rectify=False if that jolts the "
            "discriminator."
        ),
        state="exp_avg, exp_avg_var: 2x params (a third with amsgrad)",
        floor_bytes_per_param=memory_floor(2),
        recommended={"lr": RVC_LR, "betas": RVC_BETAS, "eps": 1e-16, "weight_decay": RVC_WEIGHT_DECAY},
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(
            "the belief is an average of squared deviations (g - m)^2 from a momentum that already includes "
            "the current gradient, with eps added to it every step, not a plain difference from past gradients",
            "rectification is on by default, so the first steps (five for beta2 0.99) are momentum SGD "
            "steps on the raw gradient scale, not adaptive ones",
        ),
    ),
    OptimizerInfo(
        name="AdaBeliefV2",
        class_path=_ours("adabelief", "AdaBeliefV2"),
        source="rvc_optim",
        rating=3.0,
        category="Belief-Based",
        best_for="Stable deep training",
        paper=ADABELIEF_PAPER,
        description=(
            "Our name for AdaBelief with AMSGrad on and rectification off: the denominator uses the "
            "running maximum of the belief variance, so a coordinate's step size can never grow back "
            "after a noisy stretch. Rectification must be off for the maximum to have any effect on the "
            "update. Decay is decoupled and eps is 1e-16, as in the authors' current defaults."
        ),
        when_to_use=(
            "When AdaBelief's step sizes fluctuate too much; the running maximum makes it more "
            "conservative over a long run. Same settings as AdaBelief."
        ),
        state="exp_avg, exp_avg_var, max_exp_avg_var: 3x params",
        floor_bytes_per_param=memory_floor(3),
        recommended={"lr": RVC_LR, "betas": RVC_BETAS, "eps": 1e-16, "weight_decay": RVC_WEIGHT_DECAY},
        corrections=(
            "no paper, package or repository defines an 'AdaBeliefV2'; here it is AdaBelief (Zhuang et al. "
            "2020) with amsgrad=True and rectify=False, with Adam's usual bias correction",
        ),
    ),
    OptimizerInfo(
        name="LAMB",
        class_path=_ours("lamb", "LAMB"),
        source="rvc_optim",
        rating=3.0,
        category="Layer-Adaptive",
        best_for="Large-batch training",
        paper=Paper(
            "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", "You et al.", 2019, "1904.00962"
        ),
        description=(
            "Computes an AdamW update per tensor, then rescales it by the trust ratio ||w|| / ||update||, "
            "so every layer changes by about lr relative to its own size. Gradients are first clipped by "
            "their global norm. Without weight decay (and always_adapt off) the ratio is skipped and it "
            "reduces to Adam. State is Adam's."
        ),
        when_to_use=(
            "Built for very large batches; at RVC's batch sizes it is an Adam with per-layer step "
            "control. lr is a relative change per step, about 1e-3; always_adapt=True (set here) keeps "
            "the trust ratio on biases and gains, which get no weight decay and would otherwise take "
            "plain Adam steps at that lr."
        ),
        state="exp_avg, exp_avg_sq: 2x params",
        floor_bytes_per_param=memory_floor(2, reduction=True),
        recommended={
            "lr": 1e-3,
            "betas": RVC_BETAS,
            "eps": RVC_EPS,
            "weight_decay": RVC_WEIGHT_DECAY,
            "always_adapt": True,
        },
        protocol=Protocol(
            host_syncs_per_step=0,
            host_sync_reason="trust ratios and the clipping norm stay on the device",
        ),
        test_settings={"lr": 1e-2},
        test_settings_reason="a relative change of 1e-3 per step is too slow for the 50-step contract",
        corrections=(
            "the trust ratio is applied only with weight decay (or always_adapt): with weight_decay 0 "
            "LAMB takes plain Adam steps",
            "a layer whose weights are all zero takes an Adam-sized step (trust ratio 1), not a zero step",
        ),
    ),
    OptimizerInfo(
        name="LARS",
        class_path=_ours("lars", "LARS"),
        source="rvc_optim",
        rating=3.0,
        category="Layer-Adaptive",
        best_for="Distributed training",
        paper=Paper("Large Batch Training of Convolutional Networks", "You et al.", 2017, "1708.03888"),
        description=(
            "Momentum SGD with a per-tensor local learning rate: the gradient plus weight decay is scaled "
            "by trust_coeff * ||w|| / (||g|| + weight_decay * ||w||) before it enters the momentum. A "
            "layer's relative change per step is therefore about lr * trust_coeff, independent of its "
            "gradient scale. Tensors in a group without weight decay are not rescaled unless always_adapt "
            "is set."
        ),
        when_to_use=(
            "For very large batches; little reason to use it at RVC's batch sizes. Its lr is near 1.0 "
            "(with trust_coeff 1e-3), where RVC's 1e-4 would freeze training, and always_adapt=True (set "
            "here) also scales biases and gains, which otherwise take raw SGD steps at that lr."
        ),
        state="momentum_buffer: 1x params",
        floor_bytes_per_param=memory_floor(1, reduction=True),
        recommended={"lr": 1.0, "momentum": 0.9, "weight_decay": 1e-4, "trust_coeff": 1e-3, "always_adapt": True},
        protocol=Protocol(host_syncs_per_step=0, host_sync_reason="trust ratios stay on the device"),
        corrections=(
            "LARS is a large-batch method; nothing in it is specific to distributed training",
        ),
    ),
    OptimizerInfo(
        name="Adagrad",
        class_path=_torch("Adagrad"),
        source="torch",
        rating=2.5,
        category="PyTorch Built-in",
        best_for="Sparse data",
        paper=Paper(
            "Adaptive Subgradient Methods for Online Learning and Stochastic Optimization",
            "Duchi et al.",
            2011,
            venue="JMLR",
        ),
        description=(
            "Divides each gradient by the square root of the sum of all its past squares, so "
            "frequently updated coordinates slow down and rare ones keep large steps. The sum never "
            "decays, which is what RMSprop and Adam changed. Its accumulator is created with the "
            "optimizer, and it accepts sparse gradients."
        ),
        when_to_use=(
            "For sparse gradients (for example a sparse embedding). For RVC's dense, long GAN training the "
            "ever-shrinking step is a poor fit."
        ),
        state="sum: 1x params (allocated at construction)",
        floor_bytes_per_param=memory_floor(1),
        recommended={"lr": 1e-3},
        corrections=(FUSED_CORRECTION,),
        protocol=Protocol(host_sync_reason=TORCH_FUSED_SYNC),
    ),
    OptimizerInfo(
        name="Adadelta",
        class_path=_torch("Adadelta"),
        source="torch",
        rating=2.5,
        category="PyTorch Built-in",
        best_for="No manual LR needed",
        paper=Paper("ADADELTA: An Adaptive Learning Rate Method", "Zeiler", 2012, "1212.5701"),
        description=(
            "Scales each gradient by the ratio of two root-mean-squares: that of its recent updates over "
            "that of its recent gradients, both exponential averages with decay rho. The ratio gives "
            "the step the units of the parameter, which is why lr is a multiplier (1.0). eps sits inside "
            "both roots and sets the size of the very first steps."
        ),
        when_to_use=(
            "Rarely for RVC. Keep lr 1.0 and eps 1e-6: RVC's eps 1e-9 would make the start extremely slow."
        ),
        state="square_avg, acc_delta: 2x params",
        floor_bytes_per_param=memory_floor(2),
        recommended={"lr": 1.0, "rho": 0.9, "eps": 1e-6},
        protocol=Protocol(lr_role="multiplier", host_sync_reason=TORCH_FOREACH_SYNC),
        corrections=(
            "it keeps exponential averages with decay rho, not a window of a fixed number of recent gradients",
        ),
    ),
    OptimizerInfo(
        name="Adamax",
        class_path=_torch("Adamax"),
        source="torch",
        rating=2.5,
        category="PyTorch Built-in",
        best_for="Robust to outliers",
        paper=ADAM_PAPER,
        description=(
            "The infinity-norm variant from the Adam paper: the second moment is replaced by an "
            "exponentially decayed maximum of absolute gradients, which needs no bias correction. A "
            "single large gradient raises the denominator at once but decays away at rate beta2. State "
            "is a momentum and the running maximum."
        ),
        when_to_use="A niche Adam variant; RVC's Adam settings work with it.",
        state="exp_avg, exp_inf: 2x params",
        floor_bytes_per_param=memory_floor(2),
        recommended=RVC_ADAM,
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        protocol=Protocol(host_sync_reason=TORCH_FOREACH_SYNC),
    ),
    OptimizerInfo(
        name="ASGD",
        class_path=_torch("ASGD"),
        source="torch",
        rating=2.5,
        category="PyTorch Built-in",
        best_for="Convex optimization",
        paper=Paper(
            "Acceleration of Stochastic Approximation by Averaging",
            "Polyak, Juditsky",
            1992,
            venue="SIAM Journal on Control and Optimization",
        ),
        description=(
            "Plain SGD with a decaying step size, plus a running average of the iterates kept in the "
            "state (ax). The average only starts after t0 steps (1e6 by default) and is never copied "
            "into the model by the optimizer: using it is up to the caller. Without that, it trains "
            "like SGD."
        ),
        when_to_use="Of little use for RVC; the averaging it is named for needs t0 set and manual use of ax.",
        state="ax: 1x params, plus scalars eta and mu",
        floor_bytes_per_param=memory_floor(1),
        recommended={"lr": 1e-3},
        protocol=Protocol(
            host_syncs_per_param=2,
            host_sync_reason=(
                "torch's non-capturable ASGD reads each parameter's device step counter to compute mu "
                "on the host and copies mu back to the device"
            ),
        ),
        test_settings={"lr": 0.1},
        test_settings_reason="the 50-step contract needs a larger step than the RVC-scale value",
        corrections=(
            "averaging starts after t0 steps (1e6 by default) and the average is not swapped into the model",
        ),
    ),
    OptimizerInfo(
        name="DAdaptSGD",
        class_path=_ours("dadapt", "DAdaptSGD"),
        source="rvc_optim",
        rating=2.5,
        category="LR-Free",
        best_for="SGD with auto LR",
        paper=D_ADAPTATION_PAPER,
        description=(
            "Dual-averaging SGD with a step size d * lr, d estimated by D-Adaptation from the inner "
            "products between gradients and the running step sum. The first gradient's norm sets the "
            "initial scale. Weights are recomputed from the initial point minus the step sum, optionally "
            "averaged with the previous iterate (momentum)."
        ),
        when_to_use=(
            "Rarely for RVC; SGD-family steps suit GAN training poorly. lr 1.0; the recommended momentum "
            "0.9 is a common choice, not the authors' default of 0."
        ),
        state="s, x0: 2x params (z = x0 - s is not stored)",
        floor_bytes_per_param=memory_floor(1, 1, reduction=True),
        recommended={"lr": 1.0, "momentum": 0.9},
        protocol=Protocol(
            lr_role="multiplier",
            owns_schedule=True,
            host_syncs_per_step=0,
            host_sync_reason=D_ADAPT_SYNC,
            single_lr=True,
            single_group_hparams=("weight_decay", "momentum"),
        ),
        aliases=("dadaptation-sgd",),
    ),
    OptimizerInfo(
        name="QHAdam",
        class_path=_ours("qhadam", "QHAdam"),
        source="rvc_optim",
        rating=2.5,
        category="Quasi-Hyperbolic",
        best_for="Adam-SGD continuum",
        paper=Paper("Quasi-hyperbolic momentum and Adam for deep learning", "Ma, Yarats", 2019, "1810.06801"),
        description=(
            "Adam whose numerator and denominator each mix the raw gradient with its bias-corrected "
            "average: nu1 weights the momentum against the current gradient, nu2 the second moment "
            "against the current squared gradient. nus=(1, 1) is exactly Adam; nu1 < 1 gives a quicker "
            "reaction to the current gradient. State is Adam's two moments."
        ),
        when_to_use=(
            "When you want to damp Adam's momentum lag without changing beta1. The recommended nus "
            "(0.7, 1.0) are the paper's suggestion; with (1, 1) it is plain Adam."
        ),
        state="exp_avg, exp_avg_sq: 2x params",
        floor_bytes_per_param=memory_floor(2),
        recommended={**RVC_ADAMW, "nus": (0.7, 1.0), "decouple_weight_decay": True},
        aliases=("quasi-hyperbolic-adam",),
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(
            "nus=(0, 0) gives a sign-like step g / |g|, not SGD; nus=(1, 1) is Adam",
        ),
    ),
    OptimizerInfo(
        name="SWATS",
        class_path=_ours("swats", "SWATS"),
        source="rvc_optim",
        rating=2.5,
        category="Hybrid",
        best_for="Adam→SGD switching",
        paper=Paper(
            "Improving Generalization Performance by Switching from Adam to SGD",
            "Keskar, Socher",
            2017,
            "1712.07628",
        ),
        description=(
            "Trains with Adam while estimating, from each Adam step's projection on the gradient, the "
            "SGD learning rate that would make the same progress, and keeps an average of that estimate. "
            "When the bias-corrected average agrees with the latest estimate, the whole parameter group "
            "switches to momentum SGD at that rate for the rest of training. Until then it keeps Adam's "
            "state; after the switch a momentum buffer."
        ),
        when_to_use=(
            "Rarely for RVC: in noisy GAN training the switch seldom fires, and if it does the two "
            "networks switch at different times. The switched SGD rate is kept apart from lr "
            "(group['sgd_lr']), so an LR scheduler only shapes the Adam phase."
        ),
        state=(
            "exp_avg, exp_avg_sq: 2x params, plus momentum_buffer 1x after the switch (from the first step "
            "on an accelerator, where the switch is decided on the device); lambda and step: scalars"
        ),
        floor_bytes_per_param=memory_floor(2),
        recommended=RVC_ADAM,
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(
            "the switch fires when the averaged SGD-rate estimate matches the current one, not when the "
            "adaptive learning rate's variance drops below a threshold",
            "after the switch the SGD rate is the one estimated from Adam's steps, not the lr you set",
        ),
    ),
    OptimizerInfo(
        name="Shampoo",
        class_path=_ours("shampoo", "Shampoo"),
        source="rvc_optim",
        rating=2.5,
        category="Preconditioned",
        best_for="Layer preconditioning",
        paper=Paper("Shampoo: Preconditioned Stochastic Tensor Optimization", "Gupta et al.", 2018, "1802.09568"),
        description=(
            "Keeps, for every dimension of a weight tensor, a running sum of the gradient's outer products "
            "along that dimension (a conv kernel [out, in, k] gets out x out, in x in and k x k matrices), and "
            "multiplies the gradient along each dimension by an inverse root of its matrix. The roots come "
            "from a symmetric eigendecomposition every precondition_frequency steps; the steps between reuse "
            "them. Dimensions of size 1 or wider than max_preconditioner_dim (and, unless precondition_1d, "
            "1-D tensors) keep a vector instead of a matrix. "
            "With grafting each tensor's step takes the length of an AdaGrad or Adam step and only its "
            "direction from Shampoo."
        ),
        when_to_use=(
            "An experiment for RVC when a layer-wise preconditioner is worth matrix products every step and "
            "eigendecompositions every 10. The settings here graft Adam's step length, so lr behaves like "
            "AdamW's (1e-4, beta2 0.99); they take the paper's statistics and exponent and leave "
            "enc_q.enc.cond_layer's 6144-wide dimension diagonal. Keep momentum 0 (the buffer is the "
            "preconditioned step)."
        ),
        state=(
            "per dimension a d x d statistic and its inverse root (2 d^2; 2 d for dimensions kept diagonal); "
            "graft_sq 1x params with grafting; momentum_buffer 1x params when momentum > 0; step (an int)"
        ),
        floor_bytes_per_param=memory_floor(1),
        recommended={
            "lr": RVC_LR, "momentum": 0.0, "weight_decay": 0.0, "epsilon": 1e-4, "precondition_frequency": 10,
            "max_preconditioner_dim": 1024, "exponent_multiplier": 0.5, "graft": "adam", "graft_beta2": 0.99,
            "graft_eps": 1e-8, "sequential_statistics": False, "precondition_1d": False,
        },
        protocol=Protocol(
            host_syncs_per_step=0,
            host_sync_reason=(
                "a refresh step, every precondition_frequency steps, makes one per batched eigendecomposition "
                "(torch.linalg.eigh checks convergence on the host): one per distinct tensor shape and dimension"
            ),
            refresh_every_arg="precondition_frequency",
        ),
        test_settings={"lr": 1e-2, "precondition_frequency": 2},
        test_settings_reason=(
            "lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step, and a refresh every "
            "other step runs both kinds of step"
        ),
        corrections=(
            "the Kronecker factors accumulate outer products of gradients (AdaGrad's statistics), not the Hessian",
            "the guide's code kept a per-element Adam state; Shampoo keeps a matrix per tensor dimension and "
            "multiplies the gradient by inverse roots of those matrices",
        ),
    ),
    OptimizerInfo(
        name="SOAP",
        class_path=_ours("soap", "SOAP"),
        source="rvc_optim",
        rating=2.5,
        category="Second-Order",
        best_for="Distributed 2nd order",
        paper=Paper(
            "SOAP: Improving and Stabilizing Shampoo using Adam",
            "Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson, Kakade",
            2024,
            "2409.11321",
        ),
        description=(
            "For each dimension of a weight it keeps a running average of gradient outer products (Shampoo's "
            "Kronecker factors) and their eigenvectors. Every step rotates the gradient into those eigenbases, "
            "takes an Adam step there (both moments live in the rotated space) and rotates the step back. Every "
            "precondition_frequency steps the bases are refreshed with one power step and a QR decomposition, "
            "the second moment permuted to follow the reordered eigenvectors. The first call only builds the "
            "bases (an eigendecomposition) and leaves the weights where they are."
        ),
        when_to_use=(
            "When fewer steps matter more than time per step: every step costs two matrix products per "
            "dimension per tensor, several times AdamW's time on RVC's generator. Start from lr 1e-4, betas "
            "(0.8, 0.99), eps 1e-8, precondition_frequency 10, and max_precond_dim 2048, which gives every RVC "
            "dimension up to 1152 a factor and leaves the 6144-wide enc_q.enc.cond_layer dimension diagonal "
            "(a 6144 x 6144 factor would make each refresh take seconds)."
        ),
        state=(
            "exp_avg and exp_avg_sq (2x params, in the eigenbasis); per preconditioned dimension of size d a "
            "d x d factor GG and a d x d basis Q (float32 for half-precision weights); a step count; and, not "
            "saved in the state_dict, one more d x d product Q^T Q per factor kept between refreshes"
        ),
        floor_bytes_per_param=memory_floor(2),
        recommended={
            "lr": RVC_LR, "betas": RVC_BETAS, "eps": 1e-8, "weight_decay": RVC_WEIGHT_DECAY,
            "precondition_frequency": 10, "max_precond_dim": 2048,
        },
        protocol=Protocol(
            host_sync_reason=(
                "none on ordinary steps; the eigenbases are refreshed inside step() every precondition_frequency "
                "steps (power step and QR, batched by factor size, no value read back); a parameter's first "
                "step runs eigh, which on a GPU reads its convergence flag once per factor size"
            ),
        ),
        test_settings={"lr": 1e-2},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(
            "SOAP is not a distributed method: it is Adam run in the eigenbasis of Shampoo's preconditioner, "
            "on one device like any other optimizer",
            "The guide's SOAP kept no eigenbasis at all; without the rotation it is plain Adam",
        ),
    ),
    OptimizerInfo(
        name="A2Grad",
        class_path=_ours("a2grad", "A2Grad"),
        source="rvc_optim",
        rating=2.0,
        category="Optimal Averaging",
        best_for="Theoretical guarantees",
        paper=Paper("Optimal Adaptive and Accelerated Stochastic Gradient Descent", "Deng et al.", 2018, "1810.00553"),
        description=(
            "An accelerated method that keeps two sequences: x takes gradient steps of size "
            "1 / (2L/(k+1) + beta * h), and the weights are an averaged combination of x and a "
            "momentum-like correction. h grows with the deviation of gradients from their running "
            "average (uniform, incremental or exponential averaging). There is no learning rate: the "
            "step comes from lips and beta."
        ),
        when_to_use=(
            "Mainly of theoretical interest. For RVC raise lips (larger means smaller steps), since the "
            "default gives a first step of g/20."
        ),
        state="avg_grad, x_k: 2x params, plus scalars",
        floor_bytes_per_param=memory_floor(2, reduction=True),
        recommended={"beta": 10.0, "lips": 100.0},
        protocol=Protocol(lr_role="none", host_syncs_per_step=0, host_sync_reason="h stays a device tensor"),
        corrections=(
            "it uses no second-order information: its step adapts to the spread of the gradients",
        ),
    ),
    OptimizerInfo(
        name="AggMo",
        class_path=_ours("aggmo", "AggMo"),
        source="rvc_optim",
        rating=2.0,
        category="Aggregate Momentum",
        best_for="Multi-scale momentum",
        paper=Paper("Aggregated Momentum: Stability Through Passive Damping", "Lucas et al.", 2018, "1804.00325"),
        description=(
            "Momentum SGD with several undamped momentum buffers, one per beta (0, 0.9 and 0.99 by "
            "default), whose average forms the step. Fast buffers react quickly and slow ones carry long "
            "memory, and averaging them damps the oscillation a single large beta would cause. Its "
            "betas are damping values, not Adam's."
        ),
        when_to_use=(
            "Rarely for RVC. The buffers are undamped, so the effective step is about 37x lr with the "
            "default betas; the recommended lr 3e-4 makes that about 1e-2."
        ),
        state="one momentum buffer per beta: 3x params with the default betas",
        floor_bytes_per_param=memory_floor(3),
        recommended={"lr": 3e-4},
        aliases=("aggregated-momentum",),
        test_settings={"lr": 1e-2},
        test_settings_reason="the 50-step contract needs a larger step than the RVC-scale value",
        corrections=(
            "the buffers are undamped heavy-ball sums (b <- beta * b + g), not moving averages, so the step "
            "is about 37x lr with the default betas, not lr",
        ),
    ),
    OptimizerInfo(
        name="PID",
        class_path=_ours("pid", "PID"),
        source="rvc_optim",
        rating=2.0,
        category="Control Theory",
        best_for="Novel control approach",
        paper=Paper(
            "A PID Controller Approach for Stochastic Optimization of Deep Networks",
            "An et al.",
            2018,
            venue="CVPR 2018",
        ),
        description=(
            "Reads momentum SGD as a PI controller and adds a derivative term: the step is the gradient "
            "plus an integral (a momentum buffer) and a damped average of gradient changes, each with "
            "its own gain. With momentum 0 both extra terms are skipped and it is plain SGD. It keeps "
            "three buffers."
        ),
        when_to_use=(
            "Rarely for RVC; momentum must be above 0 for it to be PID at all. The integral gain makes "
            "the effective step about 50x lr."
        ),
        state="i_buffer, grad_buffer, d_buffer: 3x params",
        floor_bytes_per_param=memory_floor(3),
        recommended={"lr": RVC_LR, "momentum": 0.9},
        aliases=("pid-optimizer",),
        test_settings={"lr": 3e-3, "momentum": 0.9},
        test_settings_reason="lr 1e-4 is tuned for long GAN runs; the 50-step contract needs a larger step",
        corrections=(
            "with the class's default momentum of 0 the integral and derivative terms are skipped and the "
            "update is plain SGD; set momentum (0.9) to get PID at all",
        ),
    ),
    OptimizerInfo(
        name="Yogi",
        class_path=_ours("yogi", "Yogi"),
        source="rvc_optim",
        rating=2.0,
        category="Controlled Growth",
        best_for="Stable variance",
        paper=Paper("Adaptive Methods for Nonconvex Optimization", "Zaheer et al.", 2018, venue="NeurIPS 2018"),
        description=(
            "Adam with an additive second-moment update: v moves by (1 - beta2) * g^2 towards g^2, up or "
            "down by the sign of (g^2 - v), instead of Adam's multiplicative average. The effective "
            "learning rate therefore changes more gradually when gradients suddenly shrink. Both moments "
            "start at a small positive value, and eps (1e-3 by default) is part of the method."
        ),
        when_to_use=(
            "When Adam's effective step grows too fast as gradients shrink. Use its own eps (1e-6 to 1e-3) "
            "rather than RVC's 1e-9, with lr 1e-4 to 1e-3."
        ),
        state="exp_avg, exp_avg_sq: 2x params",
        floor_bytes_per_param=memory_floor(2),
        recommended={"lr": 3e-4, "betas": RVC_BETAS, "eps": 1e-6},
        test_settings={"lr": 1e-2},
        test_settings_reason="the 50-step contract needs a larger step than the RVC-scale value",
        corrections=(
            "the second moment is not monotonically non-decreasing: it moves by (1 - beta2) * g^2 towards "
            "g^2 in either direction",
            "the rate of that move is 1 - beta2 (0.001 by default); the guide's code used beta2 there, which "
            "moves v by almost a whole g^2 every step",
        ),
    ),
    OptimizerInfo(
        name="Fromage",
        class_path=_ours("fromage", "Fromage"),
        source="rvc_optim",
        rating=2.0,
        category="Functional Regularization",
        best_for="Simple baseline",
        paper=Paper(
            "On the distance between two neural networks and the stability of learning",
            "Bernstein et al.",
            2020,
            "2002.03432",
        ),
        description=(
            "Frobenius matched gradient descent: each tensor's gradient is rescaled to the tensor's own "
            "norm, so a step changes the tensor by about lr relative to its size, and the result is "
            "divided by sqrt(1 + lr^2) to keep norms from growing. An optional p_bound caps each norm at "
            "a multiple of its initial value. It keeps no per-element state."
        ),
        when_to_use=(
            "A state-free baseline. Its lr is a relative change per step: 1e-3 is cautious for RVC, the "
            "authors start at 1e-2."
        ),
        state="none (a scalar per tensor with p_bound)",
        floor_bytes_per_param=memory_floor(0, reduction=True),
        recommended={"lr": 1e-3},
        corrections=(
            "the name stands for Frobenius matched gradient descent; it performs no functional "
            "regularisation, and it rescales gradients to the weight norm rather than clamping updates",
        ),
    ),
    OptimizerInfo(
        name="SM3",
        class_path=_ours("sm3", "SM3"),
        source="rvc_optim",
        rating=2.0,
        category="Memory-Efficient",
        best_for="Sublinear memory",
        paper=Paper("Memory-Efficient Adaptive Optimization", "Anil et al.", 2019, "1901.11150"),
        description=(
            "An AdaGrad with sublinear memory: instead of one accumulator per element it keeps one per "
            "slice along each dimension. An element's accumulated squared gradient is taken as the "
            "minimum over the accumulators that cover it, and each accumulator then stores the maximum "
            "over its slice. Vectors keep a full AdaGrad accumulator; an optional momentum adds a full "
            "buffer."
        ),
        when_to_use=(
            "When optimizer memory is the constraint and an AdaGrad-style decaying step is acceptable. "
            "Start around lr 1e-2 with momentum 0.9; the authors use a warm-up."
        ),
        state=(
            "accumulator_i: one vector per dimension, n_1 + ... + n_r numbers per tensor (0.5% of a full "
            "second moment on RVC's generator); a full accumulator for 1-D tensors; momentum_buffer 1x "
            "only with momentum > 0"
        ),
        floor_bytes_per_param=memory_floor(1),
        recommended={"lr": 1e-2, "momentum": 0.9},
        corrections=(
            "it does not keep an element-wise maximum of squared gradients: accumulators are per slice, "
            "and each element reads the minimum of those covering it",
        ),
    ),
    OptimizerInfo(
        name="ScheduleFreeSGD",
        class_path=_ours("schedule_free", "ScheduleFreeSGD"),
        source="rvc_optim",
        rating=2.0,
        category="Schedule-Free",
        best_for="SGD without schedule",
        paper=SCHEDULE_FREE_PAPER,
        description=(
            "The schedule-free scheme with plain gradient steps: z takes SGD steps, x averages z, and the "
            "gradient is taken at y between them, with momentum as the interpolation weight. Weight "
            "decay is a coupled L2 term at y. It stores only z."
        ),
        when_to_use=(
            "Rarely for RVC; SGD-family steps suit GAN training poorly. If you try it, expect an lr of "
            "1e-2 or more with a warm-up, and call train()/eval()."
        ),
        state="z: 1x params",
        floor_bytes_per_param=memory_floor(1),
        recommended={"lr": 1e-2, "momentum": 0.9, "warmup_steps": SF_WARMUP_STEPS},
        protocol=SCHEDULE_FREE_PROTOCOL,
        aliases=("sf-sgd", "sgd-schedulefree"),
        test_settings={"lr": 0.2, "warmup_steps": 5},
        test_settings_reason="a 1000-step warm-up would leave 50 steps at a few percent of the learning rate",
        corrections=("there is no built-in warm-up: warmup_steps defaults to 0 and must be set",),
    ),
    OptimizerInfo(
        name="Nero",
        class_path=_ours("nero", "Nero"),
        source="rvc_optim",
        rating=2.0,
        category="Normalized",
        best_for="Weight normalization",
        paper=Paper("Learning by Turning: Neural Architecture Aware Optimisation", "Liu et al.", 2021, "2102.07227"),
        description=(
            "Works per neuron (a slice along the first dimension): it normalises each neuron's gradient "
            "by a running average of its squared norm and steps by lr times a fixed scale, then projects "
            "the neuron's weights back to zero mean and unit norm. The projection is also applied when "
            "the optimizer is built, so it changes the weights before the first step. State is one "
            "scalar per neuron."
        ),
        when_to_use=(
            "Experimental for RVC. Its constraints would zero weight norm's [C, 1, 1] magnitudes, so tensors "
            "with one element per neuron are left unconstrained (put any other tensor in a group with "
            "constraints=False). Build it before the first forward pass; lr 1e-3 is cautious, the authors "
            "use 1e-2."
        ),
        state="exp_avg_sq: one value per neuron (sublinear for matrices, 1x for vectors), plus a scale per tensor",
        floor_bytes_per_param=memory_floor(0, reduction=True),
        recommended={"lr": 1e-3},
        corrections=(
            "it normalises per neuron, not per matrix, projects weights to zero mean as well as unit norm, "
            "and scales steps by a factor fixed when the optimizer is built",
        ),
    ),
)

#: The measured ratings (``rvc-optim evaluate --publish-ratings``): the benchmark's ratings.csv, as committed.
MEASURED_RATINGS_FILE = Path(__file__).parent / "data" / "measured_ratings.csv"
RECORDS = attach_measured_ratings(RECORDS, MEASURED_RATINGS_FILE)
