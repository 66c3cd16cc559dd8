"""The one list of models: name, aliases, class, whether it needs features, default hyper-parameters.

The CLI's ``--model`` choices, :func:`amr_tf.training.build_model`, checkpoint loading and the
reproduction scripts all read it. The default hyper-parameters are the class constructors' own
defaults (read from their signatures, so they are written once); MF-BPR's, learning rates
``(0.05, 0.05)`` and penalties ``(1e-3, 1e-3, 0)``, are those of the project's measured MF-BPR
runs (``pretrained/mfbpr-movielens-posters`` and the reproduction's MF-BPR, docs/reproduction.md).

Adding a model: write the class (see docs/design.md) and add one :class:`ModelSpec` to
:data:`MODELS`. The classes are named by import path and imported on first use, so that reading
the list (the CLI's ``--help``) does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

from amr_tf.errors import AmrError

#: Constructor arguments that are hyper-parameters (not shapes, data or Keras plumbing).
HYPER_PARAMETERS = ("embed_dim", "regs", "learning_rates", "init_stddev", "eps", "adv_weight", "adv_type",
                    "c0", "alpha", "w", "reg")  # the last four: MF-eALS's


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model: its registry ``name`` (also the checkpoint manifest's ``model``), aliases and class."""

    name: str
    class_path: str  # "module:Class"
    needs_features: bool
    trainable: bool = True
    aliases: tuple = ()
    description: str = ""

    @property
    def cls(self) -> type:
        """The model class (its module is imported on first use)."""
        module, _, attr = self.class_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def class_name(self) -> str:
        """The class's name, as checkpoint manifests record it (``"model"``)."""
        return self.class_path.partition(":")[2]

    @property
    def defaults(self) -> dict:
        """The default hyper-parameters: the constructor defaults along the class hierarchy (most derived first)."""
        out = {}
        for klass in self.cls.__mro__:
            init = vars(klass).get("__init__")
            if init is None or klass is object:
                continue
            for param in inspect.signature(init).parameters.values():
                if param.name in HYPER_PARAMETERS and param.default is not inspect.Parameter.empty:
                    out.setdefault(param.name, param.default)
        return out

    @property
    def arguments(self) -> tuple:
        """The keyword arguments the class's constructors take (along the class hierarchy)."""
        names = []
        for klass in self.cls.__mro__:
            init = vars(klass).get("__init__")
            if init is None or klass in (object,) or klass.__module__.startswith("keras"):
                continue
            names += [p.name for p in inspect.signature(init).parameters.values()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
        return tuple(dict.fromkeys(names))

    @property
    def accepted_arguments(self) -> tuple:
        """What :func:`amr_tf.training.build_model` accepts for any model (others' hyper-parameters are ignored)."""
        return tuple(dict.fromkeys(self.arguments + HYPER_PARAMETERS + ("loss", "adversary")))

    def build(self, dataset, **kwargs):
        """A fresh (uncompiled) model for ``dataset``; ``kwargs`` override the defaults."""
        if not self.trainable:
            return self.cls.from_dataset(dataset)
        if self.needs_features:
            return self.cls(dataset.num_users, dataset.num_items, dataset.features, **kwargs)
        return self.cls(dataset.num_users, dataset.num_items, **kwargs)

    def from_config(self, config: dict, features=None):
        """The model a checkpoint manifest's ``config`` describes (``features`` for models that use them)."""
        config = {k: v for k, v in config.items() if k != "feature_dim"}
        if self.needs_features:
            return self.cls(features=features, **config)
        return self.cls(**config)


MODELS = (  # simplest first: MF-BPR, VBPR (+ visual), AMR (+ adversary), then the baseline
    ModelSpec("MFBPR", "amr_tf.models.base:MFBPR", needs_features=False, aliases=("MF", "BPR", "MF-BPR"),
              description="matrix factorisation with BPR"),
    ModelSpec("VBPR", "amr_tf.models.vbpr:VBPR", needs_features=True, description="visual BPR, s = p . (q + c E)"),
    ModelSpec("AMR", "amr_tf.models.amr:AMR", needs_features=True,
              description="VBPR trained against the feature adversary"),
    ModelSpec("DUIF", "amr_tf.models.duif:DUIF", needs_features=True,
              description="image features only, s = p . (c E) (Geng et al. 2015)"),
    ModelSpec("AMR_DUIF", "amr_tf.models.duif:AdversarialDUIF", needs_features=True, aliases=("AMR-DUIF", "ADUIF"),
              description="DUIF trained against the feature adversary"),
    ModelSpec("EALS", "amr_tf.models.eals:EALS", needs_features=False, aliases=("MF-EALS", "MFEALS"),
              description="matrix factorisation by element-wise ALS on all missing data (He et al. 2016); "
                          "trained in closed-form epochs, not SGD"),
    ModelSpec("POP", "amr_tf.models.popularity:Popularity", needs_features=False, trainable=False,
              aliases=("POPULARITY",), description="items ranked by their number of training pairs"),
)

NAMES = tuple(spec.name for spec in MODELS)
_BY_NAME = {alias.upper(): spec for spec in MODELS for alias in (spec.name, *spec.aliases)}
_BY_CLASS = {spec.class_name: spec for spec in MODELS}


def canonical_name(name: str) -> str:
    """The registry name of ``name`` (an alias, any case); an unknown name upper-cased as given.

    For ``type=`` of a command-line flag with ``choices=NAMES``: aliases are accepted, and argparse
    reports an unknown name with its usual "invalid choice" line.
    """
    spec = _BY_NAME.get(str(name).upper()) or _BY_CLASS.get(str(name))
    return spec.name if spec is not None else str(name).upper()


def lookup(name: str) -> ModelSpec:
    """The model called ``name`` (any alias, any case) or whose class is called ``name``; :class:`AmrError` if none."""
    spec = _BY_NAME.get(str(name).upper()) or _BY_CLASS.get(str(name))
    if spec is None:
        raise AmrError(f"unknown model {name!r}; choose one of {', '.join(NAMES)}")
    return spec


def choices() -> tuple:
    """The names the CLI accepts for ``--model`` (aliases included, upper case)."""
    return tuple(_BY_NAME)


def model_classes() -> dict:
    """``{class name: class}`` of the trainable models (a checkpoint manifest's ``model`` is the class name)."""
    return {spec.class_name: spec.cls for spec in MODELS if spec.trainable}
