"""A child measurement of ``raytrain bench``: ``python -m raytrain.bench KIND JSON``."""

import json
import sys

from raytrain.bench import hdf5, images, store, workers

KINDS = {
    "loader": hdf5.loader_child,
    "in_memory": hdf5.in_memory_child,
    **images.CHILDREN,
    "recipe": workers.recipe_child,
    "proxy": store.proxy_child,
}

print(json.dumps(KINDS[sys.argv[1]](json.loads(sys.argv[2]))))
