"""Soft weight-sharing inside other people's training loops (``docs/INTEGRATIONS.md``).

- ``sws.integrations.huggingface``: ``SoftWeightSharingCallback`` for the Hugging Face
  ``Trainer`` (and ``SoftWeightSharingTrainer``, which hands the prior's values to every
  reporter); ``pip install 'sws[huggingface]'``.
- ``sws.integrations.lightning``: ``SoftWeightSharingCallback`` for PyTorch Lightning;
  ``pip install 'sws[lightning]'``.

Both attach ``sws.SoftWeightSharing`` to the model when training starts, add the prior's
gradient after each backward pass and step the mixture with its own learning rates, log
the complexity term and the mixture's state, and at the end quantise the model in place
and write the ``.sws`` file that ``sws.load(path, model=...)`` reads back.  The modules
import their framework only when imported themselves: ``import sws`` stays light.
"""
