"""Inference: a loaded model and the arithmetic it runs in, on any device.

* :mod:`avsegcli.inference.predictor` -- ``Predictor``: weights in, masks out (``logits``, ``stream``, ``predict_video``);
* :mod:`avsegcli.inference.precision` -- what ``--precision`` means, the same on every device, and its scoped switches;
* :mod:`avsegcli.inference.feed` -- frames to the device and masks back (pinned staging, side-stream copies);
* results: :mod:`avsegcli.masks.results` -- ``VideoMasks`` (a video) and ``FrameMask`` (a frame), the same in memory
  and read back from disk (it sits below inference: render and eval read saved masks without a model).
"""
