"""The application built on the library: the demo job (:mod:`~prunable_nn.app.demo`), its
command line (:mod:`~prunable_nn.app.cli`), the small data sets it reads without downloads
(:mod:`~prunable_nn.app.data`) and the picture of a run (:mod:`~prunable_nn.app.plot`,
which needs matplotlib). The library (:mod:`prunable_nn`) never imports it."""
