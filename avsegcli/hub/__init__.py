"""Named weights: a registry of the files avseg can fetch, a cache, checked downloads, name resolution.

* :mod:`avsegcli.hub.registry` -- the entries (``s4-pvt2``, ``resnet50``, ...): URLs, hashes, metadata;
* :mod:`avsegcli.hub.cache` -- ``<avseg home>/weights/``, the recorded-hash ledger, one lock per name;
* :mod:`avsegcli.hub.download` -- ``.partial`` -> checks -> rename; HTTP with resume, Drive through gdown;
* :mod:`avsegcli.hub.resolve` -- path or name -> a local file (offline mode).

Sits below :mod:`avsegcli.weights`: nothing here imports torch or the model.
"""

from avsegcli.hub.registry import REGISTRY, RELEASED, ReleasedCheckpoint, lookup, names
from avsegcli.hub.resolve import get, is_offline, resolve_weights, set_offline

__all__ = ["REGISTRY", "RELEASED", "ReleasedCheckpoint", "get", "is_offline", "lookup", "names", "resolve_weights",
           "set_offline"]
