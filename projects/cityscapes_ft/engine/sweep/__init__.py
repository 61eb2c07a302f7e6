"""Hyper-parameter sweeps on Optuna (tools/sweep.py, runner.SweepWorker): a search space of config
keys, trials that are training runs of their own, pruning fed by the periodic evaluations, studies
shared by several workers. Nothing is imported here: the trainer's hooks import .study, and .runner
imports the trainer."""
