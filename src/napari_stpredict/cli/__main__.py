"""``python -m napari_stpredict.cli``: the ``stpredict`` command."""

import sys

from . import main

sys.exit(main())
