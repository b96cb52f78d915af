"""The ``secagg`` command: argument parsing (:mod:`.entry`), the ``serve``/``client`` commands
(:mod:`.commands`), ``secagg run`` (:mod:`.runner`: a server and N clients as processes),
configuration files (:mod:`.config_file`) and run folders (:mod:`.run_folder`).

The top layer of ``fl_core``: nothing below imports it.
"""

from secagg.fl_core.cli.entry import main

__all__ = ["main"]
