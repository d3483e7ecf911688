"""`python -m rudder_sync COMMAND ...`: the shell commands, one module each in `rudder_sync/cli/`.

Each command module is imported only when it is asked for, so `check` does not pay for what
`run` imports, and `--help` pays for neither.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
