"""``python -m amr_tf`` (and the ``amr-tf`` console script): see ``amr_tf.cli``."""

import sys

from amr_tf.cli.entry import main  # importing amr_tf quiets TensorFlow's start-up (amr_tf._startup)

if __name__ == "__main__":
    sys.exit(main())
