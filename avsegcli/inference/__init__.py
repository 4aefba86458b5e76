"""Inference: a loaded model and the arithmetic it runs in, on any device.

* :mod:`avsegcli.inference.predictor` -- ``Predictor``: weights in, masks out (``logits``, ``stream``, ``predict_video``);
* :mod:`avsegcli.inference.precision` -- what ``--precision`` means, the same on every device, and its scoped switches;
* :mod:`avsegcli.inference.feed` -- frames to the device and masks back (pinned staging, side-stream copies);
* :mod:`avsegcli.inference.results` -- the one result type of a predicted frame or video.
"""
