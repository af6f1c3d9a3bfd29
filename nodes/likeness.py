"""The likeness-curve inputs every training node offers (optional, so older workflows load unchanged)."""

LIKENESS_INPUTS = {
    "likeness_every": ("INT", {"default": -1, "min": -1, "max": 100000, "tooltip":
                               "with face_model: every N steps render 2 images of the identity and score them against "
                               "the photos; the curve shows under the previews and in <name>.loss.csv. -1: auto (a "
                               "quarter of the run on a GPU within 10 % of the training time, so not for short "
                               "runs; off on the CPU), 0: off"}),
    "likeness_patience": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip":
                                  "stop early after this many evaluations without a better likeness (0: run every "
                                  "step)"}),
    "keep_best": ("BOOLEAN", {"default": True, "tooltip": "save the best-scoring evaluation's result rather than the "
                              "last step's"}),
}
