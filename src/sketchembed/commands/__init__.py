"""The commands a person runs on a trained model: ``eval.py`` (evaluate, and what it sends to wandb)
and the ``sketchembed`` subcommands built on the evaluation library (:mod:`sketchembed.eval`).

The library computes (KNN, probe, retrieval, plots, report rendering) and is what training and the
studio reuse; a command reads its options, calls the library and prints or writes the results.
"""
