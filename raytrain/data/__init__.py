"""The data path, one module per stage, in the order the data flows.

On the driver:

- ``hdf5_index``, ``image_index`` -> ``schema``: the sample index (which file, which
  row, which label; never the pixels), checked before anything starts;
- ``split``: training and validation rows, then one part per worker (stripes of a block
  dealt round-robin, so every part is a fair sample of the data);
- ``plan``: how many steps every rank runs (equal, so the all-reduce never hangs);
- ``ray_datasets``: the cuts as Ray Datasets handed to Ray Train.

On each worker (or in-process):

- ``shard``: the worker's rows as arrays;
- ``order``: each epoch's block-shuffled order of them;
- ``hdf5_reader``, ``image_reader``: reading one block, decoding one image;
- ``loader`` (the contract), ``hdf5_loader``, ``image_loader``, ``kinds`` (the
  registry by ``data.kind``): the worker's batches of each epoch;
- ``feed``: a bounded queue TensorFlow drains, filled by a background thread.

``synth`` writes learnable synthetic datasets for the demo, tests and benchmarks.
"""
