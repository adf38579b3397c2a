"""Scripts for the arm64 check: ``prepare.py`` builds the emulated userland, ``device_check.py`` runs inside it.

Both run as scripts (``python prepare.py``), so they ship with the package and work from an installed wheel.
"""
