"""A run's life on storage: where it writes (``storage``), what its directory holds
(``rundir``, the only module that knows the file names), checkpoints, what each epoch
reports (``reporter``, ``scalars``, ``progress``), and reading runs back (``runs``,
``report``)."""
