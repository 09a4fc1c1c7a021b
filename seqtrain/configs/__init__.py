"""The shipped configs, installed with the package: ``seqtrain train --config NAME`` (or
``configs/NAME.py`` from any folder; in a checkout ``configs/`` links here)."""
