"""The convergence benchmark (``rvc-optim evaluate``): measured ratings instead of the guide's stars.

Every optimizer trains on two tasks (:mod:`.tasks`: RVC through the engine's ``train_step``, and the
generator's decoder alone as a vocoder) from the same initial weights and data order, at its
recommended settings and a sweep around them, over several seeds (:mod:`.sweep`); :mod:`.results`
writes the CSVs, the markdown table, the plots and the measured 1-5 ratings; :mod:`.runner` runs the
plan with ``--resume``, a progress bar with an ETA and an optional time budget; :mod:`.cli` is the
command line.

Sizing (what the budget forced). The full benchmark must fit in 4 hours of a 2-core CPU shared with
other work. Measured with one torch thread while the machine was lightly busy (load average about
1.3 on 2 cores; under a load of 11 one 2-thread run did not finish 20 steps in 10 minutes, hence one
thread): an RVC ``tiny`` step (batch 4, G and D) takes 0.56 s with AdamW or Lion, a vocoder step 0.15 s;
a validation about 0.35 s (RVC, 3 held-out clips) and 0.05 s (vocoder). With 43 optimizers, 3 sweep
settings and 3 seeds, the budget allows:

* 50 RVC steps and 150 vocoder steps per run (the demo trains 150 RVC steps; a few thousand would be
  needed to rank late convergence: these numbers rank the *early* descent, which is what a user
  trying an optimizer on a new voice sees first);
* the sweep on one seed, then the best setting on the other two (5 runs per optimizer and task,
  not 9): about 28 + 23 s of steps per pair of runs plus validations; ``--optimizers AdamW,Lion
  --steps 50 --seeds 1`` (6 pairs, with data, imports and plots) used 371 s of CPU, so 58-62 s a
  pair, 215 pairs, about 3.5 hours of CPU (3.1-3.4 for the 39 optimizers available today);
* the ``tiny`` config only (the 40k config's CPU step is about 37 times the tiny one's:
  12.5 s against 0.34 s in ``benchmarks/results/README.md``).

The plan is written in ``docs/evaluate.md`` with the commands that run it in chunks.
"""
