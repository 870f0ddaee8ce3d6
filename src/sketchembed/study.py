"""The reference study, in one place: its ten classes and the figures it reports.

A leaf (imports nothing of sketchembed): the readers, the eval report, the human baseline, the studio
and the training summary all quote the study from here, so each figure is written once.
"""

from __future__ import annotations

#: The ten classes of the reference study.
STUDY_CLASSES: tuple[str, ...] = ("apple", "pear", "blackberry", "grapes", "banana",
                                  "bus", "van", "truck", "airplane", "helicopter")

#: The heading of the study's column in every table that quotes it beside our figures.
STUDY_COL = "study (full data, GPU)"

# The study's figures (%), each written once; the tables' strings and the curve's points below derive
# from them (ranges and variants stay as the study reports them).
STUDY_LSTM = {"acc@50": 77.7, "acc@100": 86.7}
STUDY_COMBINED = {"acc@50": 77.8, "acc@100 end-to-end": 86.5, "acc@100 transferred + fine-tuned": 87.3,
                  "knn@3_study_tie": 88.95}
# Its README says 84 %; its notebook's saved output shows 72.1 % on 43 answers.
STUDY_HUMAN = {"readme": 84, "notebook": 72.1, "notebook_answers": 43}

# What the study reports, per model kind and metric, as quoted in tables.
STUDY: dict[str, dict[str, str]] = {
    "lstm": {k: f"{v:g}" for k, v in STUDY_LSTM.items()},
    "combined": {"acc@50": f"{STUDY_COMBINED['acc@50']:g} (end-to-end and transferred)",
                 "acc@100": f"{STUDY_COMBINED['acc@100 end-to-end']:g} end-to-end / "
                            f"{STUDY_COMBINED['acc@100 transferred + fine-tuned']:g} transferred + fine-tuned",
                 "knn@3_study_tie": f"{STUDY_COMBINED['knn@3_study_tie']:g}"},
    "triplet": {"triplet_acc": "97–99.6 (by backbone)", "probe_acc": "82–87 (by backbone)",
                "knn@4": "86–91 (by backbone)"},
    "direct": {},
    "human": {"acc": f"{STUDY_HUMAN['readme']:g} (its README) / {STUDY_HUMAN['notebook']:g} on "
                     f"{STUDY_HUMAN['notebook_answers']} answers (its notebook's output)"},
}
# The study's early-recognition points (accuracy at 50 % / 100 % of the points; the combined model's
# 100 % is its best variant, transferred + fine-tuned), as plotted beside our curve.
STUDY_CURVE: dict[str, dict[float, float]] = {
    "lstm": {0.5: STUDY_LSTM["acc@50"] / 100, 1.0: STUDY_LSTM["acc@100"] / 100},
    "combined": {0.5: STUDY_COMBINED["acc@50"] / 100, 1.0: STUDY_COMBINED["acc@100 transferred + fine-tuned"] / 100}}
# Triplet pre-training vs direct cross-entropy, best backbone (linear probe / KNN K=4).
STUDY_TRIPLET_VS_DIRECT = {"probe_acc": ("87", "85"), "knn@4": ("91", "89")}
