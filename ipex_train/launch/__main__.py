"""python -m ipex_train.launch: the same as the ipex-train-run command."""
import sys

from .run import main

sys.exit(main())
