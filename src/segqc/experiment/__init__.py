"""The paper's Table 1: every uncertainty method and baseline over several seeds, resumable.

For each seed, the experiment trains the segmentation network f once per uncertainty method,
reads its masks and uncertainty maps on the training and test images, trains the quality predictors
g on the training side and scores them on the test side:

- one row per uncertainty method ``m``: the paper's g(x, y^, z) (predictor ``uncertainty``) on the
  maps of ``m``'s f;
- one row per baseline (``no-uncertainty``, ``qualitynet``, ``rca``): on the masks of the f of the
  *first* method of ``methods`` (``msp`` by default), as baselines do not read the maps.

**Training data of g.** The paper trains g on f's predictions over f's own training images
(``quality_train="paper"``); those are better than f's test predictions, so g learns from too few
failures. ``"crossfit"`` splits the training images into ``folds`` folds and takes each image's
mask and map from an f trained on the other folds; the final f (trained on all training images)
still produces the test predictions. ``"both"`` reports both, as rows ``"m"`` and ``"m (crossfit)"``.
RCA does not learn from f's predictions (only from reference images with their ground truth), so it
has one row whatever ``quality_train`` is.

**Shared f.** Methods that train the same network with the same loss and differ only at test time
(e.g. ``msp`` and ``mcdropout``: plain cross-entropy) share one trained f per seed and fold. Two
methods share f when ``create_method(name, **method_params[name]).training_key()`` is the same (a
hook each method declares; by default its name), see :func:`training_key`.

**Units and resuming.** The work is cut into units (:mod:`segqc.experiment.plan` lists them),
each cached under ``out_dir/units/`` in a folder named by the unit and a hash of everything that
determines it (:mod:`segqc.experiment.units`). A killed run leaves either a finished unit or none; a
rerun loads finished units whose key matches and computes the rest; a changed setting changes the
hash, so the unit is recomputed (never silently reused), while units it does not affect are reused.
Quality metrics are computed from the cached predictions at the end (so changing ``threshold``
recomputes nothing). Every unit re-seeds everything it uses, so a resumed run gives the same
numbers as an uninterrupted one.

Modules: :mod:`~segqc.experiment.config` (:class:`ExperimentConfig`), :mod:`~segqc.experiment.units`
(the cache), :mod:`~segqc.experiment.plan` (rows and units), :mod:`~segqc.experiment.run`
(:func:`run_experiment`), :mod:`~segqc.experiment.report` (table1.md, figures, report.md).
"""

from segqc.experiment.config import ExperimentConfig, training_key
from segqc.experiment.plan import Planner, Row
from segqc.experiment.run import run_experiment
from segqc.experiment.units import Payload, Unit, UnitRunner, UnitStore

__all__ = [
    "ExperimentConfig",
    "Payload",
    "Planner",
    "Row",
    "Unit",
    "UnitRunner",
    "UnitStore",
    "run_experiment",
    "training_key",
]
