"""Exported models: ``avseg export`` (ONNX, OpenVINO IR) and the backends that run them (``--backend``).

* :mod:`avsegcli.export.meta`: what an exported file carries about itself (preset, task, input size, ...).
* :mod:`avsegcli.export.exporter`: checkpoint -> one frames + log-mel -> logits graph, through the maintained
  exporters (``torch.onnx.export(dynamo=True)``, ``openvino.convert_model``).
* :mod:`avsegcli.export.runners`: onnxruntime and OpenVINO sessions behind one call, ``runner(frames, log_mel)``.
* :mod:`avsegcli.export.cache`: exports made on the fly, kept under ``avseg_home()/exports`` by checkpoint hash.
"""
