"""Hyper-parameter search on the validation split and the recommended defaults it produces.

``search``: ``python -m amr_tf tune`` (KerasTuner, every trial in TensorBoard's HParams dashboard,
``best.json``). ``defaults``: each dataset's recommended hyper-parameters (``<dataset
directory>.hparams.json``) and how ``train`` applies them (``--hparams recommended|original``). Importing this
package imports neither TensorFlow nor KerasTuner.
"""
