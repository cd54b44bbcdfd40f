"""Dump a run's two prior states (start and end of retraining) for benchmarks/kernel_harness.c.

Usage: python benchmarks/dump_prior_state.py RUN_DIR OUT   (writes OUT.start.bin, OUT.end.bin)

Each file: int64 J, the number of tensors and their sizes; float32 means (J-1), log-precisions
(J), mixing logits (J-1), pi0's logit, alpha (J), beta (J); then the covered weights.
"""

import sys

import numpy as np

from sws.config import from_dict, PriorConfig
from sws.method.surface import select_parameters
from sws.prior import GaussianMixturePrior
from sws.runs.rundir import RunDir
from sws.runs.stages import model_from_checkpoint, prior_from_checkpoint


def main():
    run, out = RunDir.open(sys.argv[1]), sys.argv[2]
    t, meta = run.load("retrained")
    pt, pmeta = run.load("pretrained")
    pcfg = from_dict(PriorConfig, meta["retrain"]["prior"])
    start = model_from_checkpoint(pt, pmeta)
    start_prior = GaussianMixturePrior(pcfg, list(select_parameters(start, cover=pcfg.cover).values()))
    for name, model, prior in (("start", start, start_prior),
                               ("end", model_from_checkpoint(t, meta), prior_from_checkpoint(t, meta))):
        covered = list(select_parameters(model, cover=pcfg.cover).values())
        with open(f"{out}.{name}.bin", "wb") as f:
            np.array([prior.n_components, len(covered)] + [w.numel() for w in covered], dtype=np.int64).tofile(f)
            for p in (prior.means, prior.log_precisions, prior.mixing_logits, prior.pi0_logit.reshape(1),
                      prior.alpha, prior.beta, *covered):
                p.detach().float().numpy().tofile(f)
        print(name, prior.n_components, [w.numel() for w in covered])


if __name__ == "__main__":
    main()
