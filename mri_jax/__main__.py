import sys

from mri_jax.cli import main

sys.exit(main())
