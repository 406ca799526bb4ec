"""Stylizing: content and style images in, stylized images out -- the feature the command line's
``stylize``, ``video`` and ``app`` and the Python pipeline share.

* :mod:`~stylevar.stylize.settings` -- what a stylization is asked to do: one validated object.
* :mod:`~stylevar.stylize.pipeline` -- :class:`StyleVARPipeline` and its one streaming loop.
* :mod:`~stylevar.stylize.stream` -- the loop's results and its bounded memory of encoded images.
* :mod:`~stylevar.stylize.pairs` -- what to stylize: pairs from folders and manifests, one at a time.
* :mod:`~stylevar.stylize.outputs` -- where a run's images go, its log, summary and resume hint.
* :mod:`~stylevar.stylize.controls`, :mod:`~stylevar.stylize.regional` -- creative controls, regional style.
* :mod:`~stylevar.stylize.video`, :mod:`~stylevar.stylize.cluster` -- videos, and many pairs on Ray.

Importing this package loads nothing heavy (the command line reads :mod:`~stylevar.stylize.settings`
to build its flags without torch); import the module you need.
"""
