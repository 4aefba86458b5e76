"""``avseg eval``: AVSBench metrics of a model or of saved masks.

* :mod:`avsegcli.eval.options` -- ``EvalOptions``: every ``avseg eval`` flag once, checked in one place;
* :mod:`avsegcli.eval.evaluate` -- ``evaluate``: the split, the loader, the scores (``evaluate_options``: from the flags);
* :mod:`avsegcli.eval.forward` -- batch prediction through a ``Predictor`` and saving its masks;
* :mod:`avsegcli.eval.negative` -- ``--negative-audio``: false-positive rates under silence, noise, off-screen sound;
* :mod:`avsegcli.eval.saved` -- saved masks as a prediction source;
* :mod:`avsegcli.eval.metrics` -- the official and per-video metrics;
* :mod:`avsegcli.eval.plots` -- ``--plots``.
"""
