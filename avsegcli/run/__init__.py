"""``avseg run``: many videos in, one mask folder each, resumable.

* :mod:`avsegcli.run.options` -- ``RunOptions``: every flag of a run once, validated in one place;
* :mod:`avsegcli.run.session` -- ``run_all``: one run from its ``RunOptions`` (what the command line calls);
* :mod:`avsegcli.run.plan` -- inputs, output names and the resume decision;
* :mod:`avsegcli.run.locks` -- per-video locks shared by runs into one ``--out``;
* :mod:`avsegcli.run.procs` -- decode-worker hygiene (they die with the run);
* :mod:`avsegcli.run.decode` -- decoding in worker processes;
* :mod:`avsegcli.run.local` -- ``run_videos``: batching across videos on one machine;
* :mod:`avsegcli.run.results` -- ``VideoResult``, progress hooks, ``summary.json``;
* :mod:`avsegcli.run.ray` -- the same over a Ray cluster (:mod:`~avsegcli.run.ray_driver` hands out the videos,
  :mod:`~avsegcli.run.ray_actors` segments them).

Imports point down: options <- plan (locks, results) <- decode (procs) <- local <- ray_actors <- ray_driver <- ray
<- session.
"""
