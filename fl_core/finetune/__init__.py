"""Federated DP fine-tuning of pretrained language models over the secure aggregation runtime.

``secagg run`` (no ``--dim``) runs a :class:`secagg.fl_core.finetune.job.FinetuneJob`: every party
builds the same model and split (:mod:`secagg.fl_core.finetune.party`), resolves the same DP
mechanism (:mod:`secagg.fl_core.finetune.privacy`); clients train and noise
(:mod:`secagg.fl_core.finetune.client_task`), the server steps and accounts
(:mod:`secagg.fl_core.finetune.server_task`). Submodules import torch; this package file does not.
"""
